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
//
// cfg_os = 1 runs the same layer output-stationary (see qmap/hw/systolic_os.py, modelled cycle for cycle):
// tiles (ot, pt) in the order ot -> pt, PE(r, c) accumulates output position pt*R + r of channel ot*C + c
// over k = i*KH*KW + kij (k < cfg_cin*KH*KW); at tile cycle t row r is fed A[p, t - r] and column c is fed
// B[o, t - c] (read straight from act_mem / w_mem lanes), so PE(r, c) does its k-th MAC at t = k + r + c;
// after the feed (K' + R + C - 2 cycles) the accumulators shift down into the SFU for R cycles, which writes
// ReLU(bias + acc) for positions < N. A layer takes ceil(N/R) * OT * (K' + 2R + C - 2) cycles.
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
    input  wire            cfg_os,
    input  wire [31:0]     cfg_cin,
    input  wire [31:0]     cfg_cout,
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
      busy <= !cfg_os; f <= 0; q <= 0; ot <= 0; it <= 0; ki <= 0; kj <= 0; oy <= 0; ox <= 0;
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

  // ---- output-stationary controller: tile (os_ot, os_pt), tile cycle os_t
  reg        os_busy;
  reg [31:0] os_t, os_pt, os_ot;
  wire [31:0] os_k = cfg_cin * K;
  wire [31:0] os_feed_len = os_k + R + C - 2;
  wire [31:0] os_tile_len = os_feed_len + R;
  wire [31:0] os_n_pt = (cfg_n + R - 1) / R;
  wire os_tile_end = os_busy && os_t == os_tile_len - 1;
  wire os_last_tile = os_pt == os_n_pt - 1 && os_ot == cfg_ot - 1;
  always @(posedge clk) begin
    if (rst) begin
      os_busy <= 1'b0;
    end else if (start) begin
      os_busy <= cfg_os; os_t <= 0; os_pt <= 0; os_ot <= 0;
    end else if (os_busy) begin
      if (!os_tile_end) os_t <= os_t + 1;
      else begin
        os_t <= 0;
        if (os_last_tile) os_busy <= 1'b0;
        if (os_pt != os_n_pt - 1) os_pt <= os_pt + 1;
        else begin os_pt <= 0; os_ot <= os_ot + 1; end
      end
    end
  end
  wire os_drain = os_busy && os_t >= os_feed_len;
  wire [R*AB-1:0] os_a;
  wire [R-1:0] os_av;
  wire [C*WB-1:0] os_w;
  wire [C-1:0] os_wv;
  generate
    for (g = 0; g < R; g = g + 1) begin : g_os_row  // A[p, k] = x_pad[i, nij(kij, p)], p = pt*R + g, k = t - g
      wire [31:0] kk = os_t - g, i = kk / K, kij = kk % K, p = os_pt * R + g;
      wire [31:0] addr = (i / R) * cfg_npad + ((p / cfg_wo) * cfg_s + kij / cfg_kw) * cfg_wp
                         + (p % cfg_wo) * cfg_s + kij % cfg_kw;
      wire [R*AB-1:0] word = act_mem[addr];
      assign os_av[g] = os_busy && !os_drain && os_t >= g && kk < os_k && p < cfg_n;
      assign os_a[g*AB +: AB] = os_av[g] ? word[(i % R)*AB +: AB] : {AB{1'b0}};
    end
    for (g = 0; g < C; g = g + 1) begin : g_os_col  // B[o, k] = w[o, i, kij], o = ot*C + g, k = t - g
      wire [31:0] kk = os_t - g, i = kk / K, kij = kk % K;
      wire [R*WB-1:0] word = w_mem[((os_ot * cfg_it + i / R) * K + kij) * C + g];
      assign os_wv[g] = os_busy && !os_drain && os_t >= g && kk < os_k && os_ot * C + g < cfg_cout;
      assign os_w[g*WB +: WB] = os_wv[g] ? word[(i % R)*WB +: WB] : {WB{1'b0}};
    end
  endgenerate

  wire [C*PB-1:0] bottom_psum;
  wire [C-1:0] bottom_valid;
  qmap_mac_array #(.R(R), .C(C), .WB(WB), .AB(AB), .PB(PB)) array (
      .clk(clk), .rst(rst), .sat(cfg_sat), .os(cfg_os), .drain(os_drain),
      .a_left(cfg_os ? os_a : a_left), .v_left(cfg_os ? os_av : v_left), .s_left(cfg_os ? {R{1'b0}} : s_left),
      .wcol_we(wcol_we), .wcol_idx(q), .wcol_data(wcol_data), .w_top(os_w), .wv_top(os_wv),
      .bottom_psum(bottom_psum), .bottom_valid(bottom_valid));

  // ---- output deskew: column c delayed C-1-c cycles so the whole C-vector arrives together
  wire [C-1:0] aligned_valid;
  generate
    for (g = 0; g < C; g = g + 1) begin : g_deskew
      qmap_delay #(.W(PB + 1), .D(C - 1 - g)) deskew (.clk(clk), .rst(rst),
          .d({bottom_psum[g*PB +: PB], bottom_valid[g]}), .q({psum_vec[g*PB +: PB], aligned_valid[g]}));
    end
  endgenerate
  assign psum_valid = aligned_valid[0] && !cfg_os;

  // ---- tag pipeline: the vector's fold, position and SFU flags, delayed R + C cycles to meet its psum
  wire tag_first = (it == 0) && (k == 0);
  wire tag_last = (it == cfg_it - 1) && (k == K - 1);
  wire tag_final = (f == F - 1) && (q == cfg_n - 1);
  wire [31:0] tag_ot;
  wire t_first, t_last, t_final;
  qmap_delay #(.W(32 * 3 + 3), .D(R + C)) tags (.clk(clk), .rst(rst),
      .d({f, q, ot, tag_first, tag_last, tag_final}), .q({psum_fold, psum_pos, tag_ot, t_first, t_last, t_final}));

  // ---- SFU inputs: the deskewed, tagged psum vectors (WS) or the drained bottom row (OS, row R-1-d at drain d)
  wire [31:0] os_pos = os_pt * R + (R - 1) - (os_t - os_feed_len);
  wire sfu_valid = cfg_os ? (os_drain && os_pos < cfg_n) : psum_valid;
  wire [31:0] sfu_pos = cfg_os ? os_pos : psum_pos;
  wire [31:0] sfu_ot = cfg_os ? os_ot : tag_ot;
  qmap_sfu #(.C(C), .PB(PB), .N_MAX(N_MAX), .OUT_DEPTH(OUT_DEPTH), .OT_MAX(OT_MAX)) sfu (
      .clk(clk), .rst(rst), .start(start), .sat(cfg_sat), .bias_we(bias_we), .bias_waddr(bias_waddr),
      .bias_wdata(bias_wdata), .in_valid(sfu_valid), .in_psum(cfg_os ? bottom_psum : psum_vec), .pos(sfu_pos),
      .ot(sfu_ot), .out_addr(sfu_ot * cfg_n + sfu_pos), .first(cfg_os || t_first), .last(cfg_os || t_last),
      .done_set(cfg_os ? os_tile_end && os_last_tile : psum_valid && t_final),
      .out_raddr(out_raddr), .out_rdata(out_rdata), .done(done));
endmodule
