// Weight-stationary PE with a double-buffered weight (Gemmini-style).
// psum_out <= psum_in + w * a  (w: WB-bit signed, a: AB-bit unsigned, psum: PB-bit two's complement;
// the product is exact in WB+AB+1 bits, the sum wraps or saturates at PB bits, see qmap_sat_add)
// where w = shadow on the first vector of a fold (swap = 1, which also copies shadow -> active), else active.
// The shadow register is written (w_we) while the previous fold still streams on the active one.
// Activations (with their valid/swap flags) move right, psums move down, one register each.
module qmap_pe #(parameter WB = 4, parameter AB = 4, parameter PB = 16) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 sat,
    input  wire [AB-1:0]        a_in,
    input  wire                 v_in,
    input  wire                 s_in,
    input  wire signed [PB-1:0] p_in,
    input  wire                 w_we,
    input  wire [WB-1:0]        w_data,
    output reg  [AB-1:0]        a_out,
    output reg                  v_out,
    output reg                  s_out,
    output reg  signed [PB-1:0] p_out
);
  reg signed [WB-1:0] shadow;
  reg signed [WB-1:0] active;
  wire signed [WB-1:0] w_use = s_in ? shadow : active;
  wire signed [AB:0]   a_signed = {1'b0, a_in};
  wire signed [WB+AB:0] product = w_use * a_signed;
  wire signed [PB-1:0] sum;
  qmap_sat_add #(.PB(PB), .XB(WB + AB + 1)) add (.sat(sat), .a(p_in), .b(product), .y(sum));

  always @(posedge clk) begin
    if (rst) begin
      a_out <= 0; v_out <= 1'b0; s_out <= 1'b0; p_out <= 0; shadow <= 0; active <= 0;
    end else begin
      a_out <= a_in;
      v_out <= v_in;
      s_out <= s_in;
      p_out <= v_in ? sum : {PB{1'b0}};
      if (v_in && s_in) active <= shadow;
      if (w_we) shadow <= w_data;
    end
  end
endmodule
