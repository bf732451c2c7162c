// PB-bit two's-complement sum of a PB-bit signed a and an XB-bit signed b, computed exactly in
// SW = max(PB, XB) + 1 bits; out of range it wraps (sat = 0) or clamps to [-2^(PB-1), 2^(PB-1) - 1]
// (sat = 1). The golden model (qmap.hw.systolic, spec.overflow) applies the same rule to every PE
// register and every SFU accumulator.
module qmap_sat_add #(parameter PB = 16, parameter XB = 16) (
    input  wire                 sat,
    input  wire signed [PB-1:0] a,
    input  wire signed [XB-1:0] b,
    output wire signed [PB-1:0] y
);
  localparam SW = ((PB > XB) ? PB : XB) + 1;
  wire signed [SW-1:0] wide = $signed(a) + $signed(b);
  wire signed [SW-1:0] hi = {{(SW-PB+1){1'b0}}, {(PB-1){1'b1}}};
  wire signed [SW-1:0] lo = {{(SW-PB+1){1'b1}}, {(PB-1){1'b0}}};
  assign y = (sat && wide > hi) ? hi[PB-1:0] : (sat && wide < lo) ? lo[PB-1:0] : wide[PB-1:0];
endmodule
