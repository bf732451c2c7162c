// Weight-stationary R x C conv core (default 8x8, 4-bit signed weights x 4-bit unsigned activations,
// 16-bit psums) with double-buffered weights; runs a whole tiled conv layer from its memories.
// One build serves every layer: the array shape and number formats are parameters, the layer's geometry
// is a runtime configuration (cfg_*: padded width WP, padded size NPAD, output width WO, positions N,
// kernel KH x KW, stride S, itiles IT, otiles OT; held constant from start to done) that the testbench
// reads from the folder's qmap_layer.txt. The memory depths (*_DEPTH, N_MAX, OT_MAX) bound the layers.
//
// Memories (written by the testbench before start, one word per course-file line):
//   act_mem[it*NPAD + nij]            = line nij of activation_tile{it}.txt     (R x AB bits, lane r = channel r)
//   w_mem[((ot*IT + it)*K + k)*C + c] = line c of weight_itile{it}_otile{ot}_kij{k}.txt (R x WB bits)
//   bias (SFU) [ot]                   = bias_otile{ot}.txt (C x PB bits; zero when the folder has none)
//   out_mem[ot*N + p]                 = line p of out(_otile{ot}).txt             (C x PB bits), read via out_raddr
// Schedule (see qmap/hw/systolic.py, which models it cycle for cycle): fold f = (ot, it, kij) runs in
// cycles [f*I, (f+1)*I), I = max(N, R, C); at step q it writes weight column q (q < C) into the shadow
// registers and issues input vector nij(kij, q) (q < N). done rises at cycle (F-1)*I + N + R + C after start.
// cfg_sat = 1: every PE and SFU sum saturates at PB bits instead of wrapping.
module qmap_core #(
    parameter R = 8, parameter C = 8, parameter WB = 4, parameter AB = 4, parameter PB = 16,
    parameter ACT_DEPTH = 36, parameter W_DEPTH = 72, parameter OUT_DEPTH = 16, parameter N_MAX = 16,
    parameter OT_MAX = 1
) (
    input  wire            clk,
    input  wire            rst,
    input  wire            start,
    input  wire [31:0]     cfg_wp,
    input  wire [31:0]     cfg_npad,
    input  wire [31:0]     cfg_wo,
    input  wire [31:0]     cfg_n,
    input  wire [31:0]     cfg_kh,
    input  wire [31:0]     cfg_kw,
    input  wire [31:0]     cfg_s,
    input  wire [31:0]     cfg_it,
    input  wire [31:0]     cfg_ot,
    input  wire            cfg_sat,
    input  wire            act_we,
    input  wire [31:0]     act_waddr,
    input  wire [R*AB-1:0] act_wdata,
    input  wire            w_we,
    input  wire [31:0]     w_waddr,
    input  wire [R*WB-1:0] w_wdata,
    input  wire            bias_we,
    input  wire [31:0]     bias_waddr,
    input  wire [C*PB-1:0] bias_wdata,
    input  wire [31:0]     out_raddr,
    output wire [C*PB-1:0] out_rdata,
    output wire            done,
    output wire            psum_valid,
    output wire [C*PB-1:0] psum_vec,
    output wire [31:0]     psum_fold,
    output wire [31:0]     psum_pos
);
  wire [31:0] K = cfg_kh * cfg_kw;
  wire [31:0] I = (cfg_n > R) ? ((cfg_n > C) ? cfg_n : C) : ((R > C) ? R : C);
  wire [31:0] F = cfg_ot * cfg_it * K;

  reg [R*AB-1:0] act_mem [0:ACT_DEPTH-1];
  reg [R*WB-1:0] w_mem [0:W_DEPTH-1];
  always @(posedge clk) begin
    if (act_we) act_mem[act_waddr] <= act_wdata;
    if (w_we) w_mem[w_waddr] <= w_wdata;
  end

  // ---- controller: counters of fold (ot, it, ki, kj), step q and output position (oy, ox)
  reg        busy;
  reg [31:0] f, q, ot, it, ki, kj, oy, ox;
  wire fold_end = (q == I - 1);
  always @(posedge clk) begin
    if (rst) begin
      busy <= 1'b0;
    end else if (start) begin
      busy <= 1'b1; f <= 0; q <= 0; ot <= 0; it <= 0; ki <= 0; kj <= 0; oy <= 0; ox <= 0;
    end else if (busy) begin
      if (fold_end) begin
        q <= 0; oy <= 0; ox <= 0; f <= f + 1;
        if (f == F - 1) busy <= 1'b0;
        if (kj != cfg_kw - 1) kj <= kj + 1;
        else begin
          kj <= 0;
          if (ki != cfg_kh - 1) ki <= ki + 1;
          else begin
            ki <= 0;
            if (it != cfg_it - 1) it <= it + 1;
            else begin it <= 0; ot <= ot + 1; end
          end
        end
      end else begin
        q <= q + 1;
        if (ox != cfg_wo - 1) ox <= ox + 1;
        else begin ox <= 0; oy <= oy + 1; end
      end
    end
  end

  wire [31:0] k = ki * cfg_kw + kj;
  wire issue = busy && (q < cfg_n);
  wire wcol_we = busy && (q < C);
  wire [R*WB-1:0] wcol_data = w_mem[((ot * cfg_it + it) * K + k) * C + q];
  wire [R*AB-1:0] issue_vec = act_mem[it * cfg_npad + (oy * cfg_s + ki) * cfg_wp + ox * cfg_s + kj];

  // ---- L0: one input register, then row r delayed r more cycles (diagonal skew)
  reg [R*AB-1:0] l0_vec;
  reg            l0_valid, l0_swap;
  always @(posedge clk) begin
    l0_vec <= issue ? issue_vec : {R*AB{1'b0}};
    l0_valid <= rst ? 1'b0 : issue;
    l0_swap <= rst ? 1'b0 : issue && q == 0;
  end
  wire [R*AB-1:0] a_left;
  wire [R-1:0] v_left, s_left;
  genvar g;
  generate
    for (g = 0; g < R; g = g + 1) begin : g_skew
      qmap_delay #(.W(AB + 2), .D(g)) skew (.clk(clk), .rst(rst), .d({l0_vec[g*AB +: AB], l0_valid, l0_swap}),
                                          .q({a_left[g*AB +: AB], v_left[g], s_left[g]}));
    end
  endgenerate

  wire [C*PB-1:0] bottom_psum;
  wire [C-1:0] bottom_valid;
  qmap_mac_array #(.R(R), .C(C), .WB(WB), .AB(AB), .PB(PB)) array (
      .clk(clk), .rst(rst), .sat(cfg_sat), .a_left(a_left), .v_left(v_left), .s_left(s_left),
      .wcol_we(wcol_we), .wcol_idx(q), .wcol_data(wcol_data),
      .bottom_psum(bottom_psum), .bottom_valid(bottom_valid));

  // ---- output deskew: column c delayed C-1-c cycles so the whole C-vector arrives together
  wire [C-1:0] aligned_valid;
  generate
    for (g = 0; g < C; g = g + 1) begin : g_deskew
      qmap_delay #(.W(PB + 1), .D(C - 1 - g)) deskew (.clk(clk), .rst(rst),
          .d({bottom_psum[g*PB +: PB], bottom_valid[g]}), .q({psum_vec[g*PB +: PB], aligned_valid[g]}));
    end
  endgenerate
  assign psum_valid = aligned_valid[0];

  // ---- tag pipeline: the vector's fold, position and SFU flags, delayed R + C cycles to meet its psum
  wire tag_first = (it == 0) && (k == 0);
  wire tag_last = (it == cfg_it - 1) && (k == K - 1);
  wire tag_final = (f == F - 1) && (q == cfg_n - 1);
  wire [31:0] tag_ot;
  wire t_first, t_last, t_final;
  qmap_delay #(.W(32 * 3 + 3), .D(R + C)) tags (.clk(clk), .rst(rst),
      .d({f, q, ot, tag_first, tag_last, tag_final}), .q({psum_fold, psum_pos, tag_ot, t_first, t_last, t_final}));

  qmap_sfu #(.C(C), .PB(PB), .N_MAX(N_MAX), .OUT_DEPTH(OUT_DEPTH), .OT_MAX(OT_MAX)) sfu (
      .clk(clk), .rst(rst), .start(start), .sat(cfg_sat), .bias_we(bias_we), .bias_waddr(bias_waddr),
      .bias_wdata(bias_wdata), .in_valid(psum_valid), .in_psum(psum_vec), .pos(psum_pos), .ot(tag_ot),
      .out_addr(tag_ot * cfg_n + psum_pos), .first(t_first), .last(t_last), .final_vec(t_final),
      .out_raddr(out_raddr), .out_rdata(out_rdata), .done(done));
endmodule
