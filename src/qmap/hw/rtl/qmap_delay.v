// D-stage register delay line of a W-bit bus (D = 0: wire). Used for the L0 skew, the output deskew
// (the "output FIFO" that realigns the columns) and the SFU tag pipeline.
module qmap_delay #(parameter W = 1, parameter D = 1) (
    input  wire         clk,
    input  wire         rst,
    input  wire [W-1:0] d,
    output wire [W-1:0] q
);
  generate
    if (D == 0) begin : g_wire
      assign q = d;
    end else begin : g_regs
      reg [W-1:0] stage [0:D-1];
      integer i;
      always @(posedge clk) begin
        stage[0] <= rst ? {W{1'b0}} : d;
        for (i = 1; i < D; i = i + 1) stage[i] <= rst ? {W{1'b0}} : stage[i-1];
      end
      assign q = stage[D-1];
    end
  endgenerate
endmodule
