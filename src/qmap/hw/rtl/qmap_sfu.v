// Special-function unit: accumulates the aligned psum vectors of an output tile over its folds
// (itile x kij), starting from the tile's bias, and writes ReLU(acc) to the output memory on the tile's
// last fold:
//   acc[pos] <= (first ? bias[ot] : acc[pos]) + psum;  if (last) out[out_addr] <= max(that sum, 0)
// Sums wrap or saturate at PB bits (qmap_sat_add). done rises the cycle after done_set (the final write).
module qmap_sfu #(parameter C = 8, parameter PB = 16, parameter N_MAX = 16, parameter OUT_DEPTH = 16,
                  parameter OT_MAX = 1) (
    input  wire            clk,
    input  wire            rst,
    input  wire            start,
    input  wire            sat,
    input  wire            bias_we,
    input  wire [31:0]     bias_waddr,
    input  wire [C*PB-1:0] bias_wdata,
    input  wire            in_valid,
    input  wire [C*PB-1:0] in_psum,
    input  wire [31:0]     pos,
    input  wire [31:0]     ot,
    input  wire [31:0]     out_addr,
    input  wire            first,
    input  wire            last,
    input  wire            done_set,
    input  wire [31:0]     out_raddr,
    output wire [C*PB-1:0] out_rdata,
    output reg             done
);
  reg [C*PB-1:0] acc_mem [0:N_MAX-1];
  reg [C*PB-1:0] out_mem [0:OUT_DEPTH-1];
  reg [C*PB-1:0] bias_mem [0:OT_MAX-1];
  wire [C*PB-1:0] prev_vec = first ? bias_mem[ot] : acc_mem[pos];
  wire [C*PB-1:0] sum;
  wire [C*PB-1:0] relu;
  genvar c;
  generate
    for (c = 0; c < C; c = c + 1) begin : g_lane
      wire signed [PB-1:0] lane_sum;
      qmap_sat_add #(.PB(PB), .XB(PB)) add (.sat(sat), .a(prev_vec[c*PB +: PB]), .b(in_psum[c*PB +: PB]),
                                            .y(lane_sum));
      assign sum[c*PB +: PB] = lane_sum;
      assign relu[c*PB +: PB] = lane_sum[PB-1] ? {PB{1'b0}} : lane_sum;
    end
  endgenerate
  assign out_rdata = out_mem[out_raddr];

  always @(posedge clk) begin
    if (bias_we) bias_mem[bias_waddr] <= bias_wdata;
    if (rst || start) begin
      done <= 1'b0;
    end else begin
      if (in_valid) acc_mem[pos] <= sum;
      if (in_valid && last) out_mem[out_addr] <= relu;
      if (done_set) done <= 1'b1;
    end
  end
endmodule
