// PE of the dual-dataflow core. Activations (with their valid/swap flags) move right, one register per PE.
// Weight-stationary (os = 0), double-buffered weight (Gemmini-style):
//   p_out <= p_in + w * a, w = shadow on the first vector of a fold (swap = 1, which also copies shadow ->
//   active), else active; psums move down; the shadow register is written (w_we) while the previous fold
//   still streams on the active one.
// Output-stationary (os = 1): weights move down with their valid flag (w_in -> w_out); p_out is the PE's own
//   accumulator: p_out <= p_out + w_in * a_in when both operands are valid; during drain it takes p_in (the
//   accumulator above, zero at the top row), so the column shifts down into the SFU one row per cycle.
// w: WB-bit signed, a: AB-bit unsigned; the product is exact in WB+AB+1 bits, the PB-bit sum wraps or
// saturates (qmap_sat_add).
module qmap_pe #(parameter WB = 4, parameter AB = 4, parameter PB = 16) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 sat,
    input  wire                 os,
    input  wire                 drain,
    input  wire [AB-1:0]        a_in,
    input  wire                 v_in,
    input  wire                 s_in,
    input  wire signed [PB-1:0] p_in,
    input  wire                 w_we,
    input  wire [WB-1:0]        w_data,
    input  wire [WB-1:0]        w_in,
    input  wire                 wv_in,
    output reg  [AB-1:0]        a_out,
    output reg                  v_out,
    output reg                  s_out,
    output reg  signed [PB-1:0] p_out,
    output reg  [WB-1:0]        w_out,
    output reg                  wv_out
);
  reg signed [WB-1:0] shadow;
  reg signed [WB-1:0] active;
  wire signed [WB-1:0] w_use = os ? $signed(w_in) : s_in ? shadow : active;
  wire signed [AB:0]   a_signed = {1'b0, a_in};
  wire signed [WB+AB:0] product = w_use * a_signed;
  wire signed [PB-1:0] sum;
  qmap_sat_add #(.PB(PB), .XB(WB + AB + 1)) add (.sat(sat), .a(os ? p_out : p_in), .b(product), .y(sum));

  always @(posedge clk) begin
    if (rst) begin
      a_out <= 0; v_out <= 1'b0; s_out <= 1'b0; p_out <= 0; shadow <= 0; active <= 0; w_out <= 0; wv_out <= 1'b0;
    end else begin
      a_out <= a_in;
      v_out <= v_in;
      s_out <= s_in;
      w_out <= w_in;
      wv_out <= wv_in;
      if (!os) p_out <= v_in ? sum : {PB{1'b0}};
      else if (drain) p_out <= p_in;
      else if (v_in && wv_in) p_out <= sum;
      if (v_in && s_in) active <= shadow;
      if (w_we) shadow <= w_data;
    end
  end
endmodule
