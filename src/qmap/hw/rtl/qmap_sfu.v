// Special-function unit: accumulates the aligned psum vectors of an output tile over its folds
// (itile x kij) and writes ReLU(acc) to the output memory on the tile's last fold.
//   acc[pos] <= (first ? 0 : acc[pos]) + psum;  if (last) out[out_addr] <= max(acc[pos] + psum, 0)
// done rises the cycle after the write of the final vector (tag_final).
module qmap_sfu #(parameter C = 8, parameter PB = 16, parameter N = 16, parameter OUT_DEPTH = 16) (
    input  wire            clk,
    input  wire            rst,
    input  wire            start,
    input  wire            in_valid,
    input  wire [C*PB-1:0] in_psum,
    input  wire [31:0]     pos,
    input  wire [31:0]     out_addr,
    input  wire            first,
    input  wire            last,
    input  wire            final_vec,
    input  wire [31:0]     out_raddr,
    output wire [C*PB-1:0] out_rdata,
    output reg             done
);
  reg [C*PB-1:0] acc_mem [0:N-1];
  reg [C*PB-1:0] out_mem [0:OUT_DEPTH-1];
  wire [C*PB-1:0] sum;
  wire [C*PB-1:0] relu;
  genvar c;
  generate
    for (c = 0; c < C; c = c + 1) begin : g_lane
      wire signed [PB-1:0] prev = first ? {PB{1'b0}} : acc_mem[pos][c*PB +: PB];
      wire signed [PB-1:0] lane_sum = prev + $signed(in_psum[c*PB +: PB]);
      assign sum[c*PB +: PB] = lane_sum;
      assign relu[c*PB +: PB] = lane_sum[PB-1] ? {PB{1'b0}} : lane_sum;
    end
  endgenerate
  assign out_rdata = out_mem[out_raddr];

  always @(posedge clk) begin
    if (rst || start) begin
      done <= 1'b0;
    end else if (in_valid) begin
      acc_mem[pos] <= sum;
      if (last) out_mem[out_addr] <= relu;
      if (final_vec) done <= 1'b1;
    end
  end
endmodule
