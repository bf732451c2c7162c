// R x C grid of qmap_pe. Row r receives activation lane r at its left edge (already skewed by the L0 or the
// output-stationary feeder). Weight-stationary: column c's weights are written (one column per cycle) from
// wcol_data, lane r -> PE(r, c). Output-stationary: column c's weights enter PE(0, c) from w_top/wv_top and
// move down; drain shifts every column's accumulators down one row.
// bottom_psum/bottom_valid: the registered psums leaving row R-1, column c in bits [c*PB +: PB].
module qmap_mac_array #(parameter R = 8, parameter C = 8, parameter WB = 4, parameter AB = 4,
                        parameter PB = 16) (
    input  wire            clk,
    input  wire            rst,
    input  wire            sat,
    input  wire            os,
    input  wire            drain,
    input  wire [R*AB-1:0] a_left,
    input  wire [R-1:0]    v_left,
    input  wire [R-1:0]    s_left,
    input  wire            wcol_we,
    input  wire [31:0]     wcol_idx,
    input  wire [R*WB-1:0] wcol_data,
    input  wire [C*WB-1:0] w_top,
    input  wire [C-1:0]    wv_top,
    output wire [C*PB-1:0] bottom_psum,
    output wire [C-1:0]    bottom_valid
);
  wire [AB-1:0] a_h [0:R-1][0:C];
  wire          v_h [0:R-1][0:C];
  wire          s_h [0:R-1][0:C];
  wire [PB-1:0] p_v [0:R][0:C-1];
  wire [WB-1:0] w_v [0:R][0:C-1];
  wire          wv_v [0:R][0:C-1];
  genvar r, c;
  generate
    for (c = 0; c < C; c = c + 1) begin : g_top
      assign p_v[0][c] = {PB{1'b0}};
      assign w_v[0][c] = w_top[c*WB +: WB];
      assign wv_v[0][c] = wv_top[c];
    end
    for (r = 0; r < R; r = r + 1) begin : g_row
      assign a_h[r][0] = a_left[r*AB +: AB];
      assign v_h[r][0] = v_left[r];
      assign s_h[r][0] = s_left[r];
      for (c = 0; c < C; c = c + 1) begin : g_col
        qmap_pe #(.WB(WB), .AB(AB), .PB(PB)) pe (
            .clk(clk), .rst(rst), .sat(sat), .os(os), .drain(drain),
            .a_in(a_h[r][c]), .v_in(v_h[r][c]), .s_in(s_h[r][c]), .p_in(p_v[r][c]),
            .w_we(wcol_we && wcol_idx == c), .w_data(wcol_data[r*WB +: WB]), .w_in(w_v[r][c]), .wv_in(wv_v[r][c]),
            .a_out(a_h[r][c+1]), .v_out(v_h[r][c+1]), .s_out(s_h[r][c+1]), .p_out(p_v[r+1][c]),
            .w_out(w_v[r+1][c]), .wv_out(wv_v[r+1][c]));
      end
    end
    for (c = 0; c < C; c = c + 1) begin : g_bottom
      assign bottom_psum[c*PB +: PB] = p_v[R][c];
      assign bottom_valid[c] = v_h[R-1][c+1];
    end
  endgenerate
endmodule
