// Plain Verilog testbench of qmap_core (no Python needed). One build runs any layer that fits its memory
// depths: it reads the folder +dir=PATH the way the course template's core_tb.v reads its files, loads the
// memories, runs the layer and prints
//   QMAP_RESULT cycles=<n> psums=<n> psum_mismatches=<n> outputs=<n> output_mismatches=<n>
//               acc_mismatches=<n> format_errors=<n> done=<0|1>
// and, with +out=FILE, writes the core's output memory to FILE (one C x PB-bit line per (otile, position)).
//
// Files: qmap_layer.txt ("name value" lines, in this order: wp npad wo n kh kw stride itiles otiles saturate
// bias reference addr_bits os cin cout packed; os = 1 runs the layer output-stationary).
// activation_tile{it}.txt, weight_itile{it}_otile{ot}_kij{k}.txt, bias_otile{ot}.txt (when bias = 1) -- or,
// when packed = 1, the same lines in memory order in activation.txt, weight.txt and bias.txt (one file each:
// the whole-network run writes these) -- and, when reference = 1, psum files, out(_otile{ot}).txt and acc_address.txt. As in the
// template, each file but acc_address.txt starts with three header tokens skipped by $fscanf("%s"), every
// data line is read with $fscanf("%<width>b") (Icarus; Verilator 5.006 has no width for %b, so it reads
// "%b"), and acc_address.txt is read with $fscanf("%<addr_bits>b") from its first line, K addresses per
// output position. Every read that does not return 1 counts as a format error.
// With reference = 1 it checks every psum vector against the psum files, every output against the out
// files, and replays the template's accumulation: output (ot, p) = ReLU(bias + sum over itiles and the K
// addresses a of psum memory[a]) must equal the out file's line (acc_mismatches).
module qmap_tb;
  parameter R = 8, C = 8, WB = 4, AB = 4, PB = 16;
  parameter ACT_DEPTH = 36, W_DEPTH = 72, OUT_DEPTH = 16, N_MAX = 16, OT_MAX = 1, PSUM_DEPTH = 324;
  localparam W_MAX = (R * AB > C * PB) ? ((R * AB > R * WB) ? R * AB : R * WB)
                                       : ((C * PB > R * WB) ? C * PB : R * WB);

  reg clk = 0, rst = 1, start = 0, act_we = 0, w_we = 0, bias_we = 0;
  reg [31:0] act_waddr = 0, w_waddr = 0, bias_waddr = 0, out_raddr = 0;
  reg [R*AB-1:0] act_wdata = 0;
  reg [R*WB-1:0] w_wdata = 0;
  reg [C*PB-1:0] bias_wdata = 0;
  reg [31:0] wp, npad, wo, n, kh, kw, s, it_n, ot_n, addr_bits, cin, cout;
  reg sat, has_bias, reference, os, is_packed;
  wire [C*PB-1:0] out_rdata, psum_vec;
  wire done, psum_valid;
  wire [31:0] psum_fold, psum_pos;
  always #5 clk = ~clk;

  qmap_core #(.R(R), .C(C), .WB(WB), .AB(AB), .PB(PB), .ACT_DEPTH(ACT_DEPTH), .W_DEPTH(W_DEPTH),
              .OUT_DEPTH(OUT_DEPTH), .N_MAX(N_MAX), .OT_MAX(OT_MAX)) dut (
      .clk(clk), .rst(rst), .start(start), .cfg_wp(wp), .cfg_npad(npad), .cfg_wo(wo), .cfg_n(n), .cfg_kh(kh),
      .cfg_kw(kw), .cfg_s(s), .cfg_it(it_n), .cfg_ot(ot_n), .cfg_sat(sat), .cfg_os(os), .cfg_cin(cin), .cfg_cout(cout),
      .act_we(act_we), .act_waddr(act_waddr), .act_wdata(act_wdata), .w_we(w_we), .w_waddr(w_waddr),
      .w_wdata(w_wdata), .bias_we(bias_we), .bias_waddr(bias_waddr), .bias_wdata(bias_wdata),
      .out_raddr(out_raddr), .out_rdata(out_rdata), .done(done), .psum_valid(psum_valid), .psum_vec(psum_vec),
      .psum_fold(psum_fold), .psum_pos(psum_pos));

  reg [C*PB-1:0] psum_file [0:PSUM_DEPTH-1];
  reg [C*PB-1:0] out_file [0:OUT_DEPTH-1];
  reg [31:0] addr_file [0:N_MAX*16-1];
  reg [C*PB-1:0] bias_file [0:OT_MAX-1];
  reg [8*512-1:0] dir, fname, out_path;
  reg [8*256-1:0] token;
  reg [8*16-1:0] fmt;
  integer fd, i, r, ot, it, k, f, kk, cycles, psums, psum_bad, out_bad, acc_bad, fmt_bad, ki, kj, oy, ox;
  integer value, c, max_cycles, kn;
  reg [W_MAX-1:0] word;
  reg signed [63:0] lane, acc;
  reg [C*PB-1:0] expect_vec;

  // Open fname; with skip_header, skip its three header tokens the template's way ($fscanf "%s").
  task open_file(input skip_header);
    begin
      fd = $fopen(fname, "r");
      if (fd == 0) begin
        $display("QMAP_ERROR cannot open %0s", fname);
        $finish;
      end
      if (skip_header) for (i = 0; i < 3; i = i + 1) begin
        r = $fscanf(fd, "%s", token);
        if (r != 1) fmt_bad = fmt_bad + 1;
      end
    end
  endtask

  // One data line of `width` binary digits into word, as the template's $fscanf("%<width>b").
  task read_line(input integer width);
    begin
      word = 0;
`ifdef VERILATOR
      r = $fscanf(fd, "%b", word);
`else
      $sformat(fmt, "%%%0db", width);
      r = $fscanf(fd, fmt, word);
`endif
      if (r != 1) fmt_bad = fmt_bad + 1;
    end
  endtask

  // Read one line and write it into the core's memory `which` (0 activations, 1 weights, 2 bias) at addr.
  task load_line(input integer which, input integer addr);
    begin
      read_line(which == 0 ? R * AB : which == 1 ? R * WB : C * PB);
      act_we = which == 0; w_we = which == 1; bias_we = which == 2;
      act_waddr = addr; w_waddr = addr; bias_waddr = addr;
      act_wdata = word[R*AB-1:0]; w_wdata = word[R*WB-1:0]; bias_wdata = word[C*PB-1:0];
      @(posedge clk); #1;
      act_we = 0; w_we = 0; bias_we = 0;
    end
  endtask

  task read_config;
    begin
      $sformat(fname, "%0s/qmap_layer.txt", dir);
      open_file(0);
      r = $fscanf(fd, "%s %d", token, wp); r = $fscanf(fd, "%s %d", token, npad);
      r = $fscanf(fd, "%s %d", token, wo); r = $fscanf(fd, "%s %d", token, n);
      r = $fscanf(fd, "%s %d", token, kh); r = $fscanf(fd, "%s %d", token, kw);
      r = $fscanf(fd, "%s %d", token, s); r = $fscanf(fd, "%s %d", token, it_n);
      r = $fscanf(fd, "%s %d", token, ot_n); r = $fscanf(fd, "%s %d", token, value); sat = value[0];
      r = $fscanf(fd, "%s %d", token, value); has_bias = value[0];
      r = $fscanf(fd, "%s %d", token, value); reference = value[0];
      r = $fscanf(fd, "%s %d", token, addr_bits);
      r = $fscanf(fd, "%s %d", token, value); os = value[0];
      r = $fscanf(fd, "%s %d", token, cin); r = $fscanf(fd, "%s %d", token, cout);
      r = $fscanf(fd, "%s %d", token, value); is_packed = value[0];
      if (r != 2) begin
        $display("QMAP_ERROR %0s: expected 17 'name value' lines", fname);
        $finish;
      end
      $fclose(fd);
      if (it_n * npad > ACT_DEPTH || ot_n * it_n * kh * kw * C > W_DEPTH || ot_n * n > OUT_DEPTH || n > N_MAX
          || ot_n > OT_MAX || (reference && (ot_n * it_n * kh * kw * npad > PSUM_DEPTH || kh * kw > 16))) begin
        $display("QMAP_ERROR layer does not fit this build's memory depths");
        $finish;
      end
      max_cycles = 4 * (ot_n * it_n * kh * kw * (n + R + C) + n + R + C
                        + ot_n * ((n + R - 1) / R) * (cin * kh * kw + 2 * R + C));
    end
  endtask

  initial begin
    fmt_bad = 0;
    if (!$value$plusargs("dir=%s", dir)) begin
      $display("QMAP_ERROR missing +dir=PATH");
      $finish;
    end
    read_config;
    repeat (2) @(posedge clk);
    #1 rst = 0;
    if (is_packed) begin
      $sformat(fname, "%0s/activation.txt", dir);
      open_file(1);
    end
    for (it = 0; it < it_n; it = it + 1) begin
      if (!is_packed) begin
        $sformat(fname, "%0s/activation_tile%0d.txt", dir, it);
        open_file(1);
      end
      for (kk = 0; kk < npad; kk = kk + 1) load_line(0, it * npad + kk);
      if (!is_packed) $fclose(fd);
    end
    if (is_packed) begin
      $fclose(fd);
      $sformat(fname, "%0s/weight.txt", dir);
      open_file(1);
    end
    kn = kh * kw;
    for (ot = 0; ot < ot_n; ot = ot + 1) begin
      for (it = 0; it < it_n; it = it + 1) begin
        for (k = 0; k < kn; k = k + 1) begin
          f = (ot * it_n + it) * kn + k;
          if (!is_packed) begin
            $sformat(fname, "%0s/weight_itile%0d_otile%0d_kij%0d.txt", dir, it, ot, k);
            open_file(1);
          end
          for (kk = 0; kk < C; kk = kk + 1) load_line(1, f * C + kk);
          if (!is_packed) $fclose(fd);
          if (reference) begin
            if (it_n == 1 && ot_n == 1) $sformat(fname, "%0s/psum_kij%0d.txt", dir, k);
            else $sformat(fname, "%0s/psum_itile%0d_otile%0d_kij%0d.txt", dir, it, ot, k);
            open_file(1);
            for (kk = 0; kk < npad; kk = kk + 1) begin
              read_line(C * PB);
              psum_file[f * npad + kk] = word[C*PB-1:0];
            end
            $fclose(fd);
          end
        end
      end
      bias_file[ot] = 0;
      if (has_bias && !is_packed) begin
        $sformat(fname, "%0s/bias_otile%0d.txt", dir, ot);
        open_file(1);
        read_line(C * PB);
        bias_file[ot] = word[C*PB-1:0];
        $fclose(fd);
      end
      bias_we = 1; bias_waddr = ot; bias_wdata = bias_file[ot];
      @(posedge clk); #1;
      bias_we = 0;
      if (reference) begin
        if (ot_n == 1) $sformat(fname, "%0s/out.txt", dir);
        else $sformat(fname, "%0s/out_otile%0d.txt", dir, ot);
        open_file(1);
        for (kk = 0; kk < n; kk = kk + 1) begin
          read_line(C * PB);
          out_file[ot * n + kk] = word[C*PB-1:0];
        end
        $fclose(fd);
      end
    end
    if (is_packed) begin
      $fclose(fd);
      if (has_bias) begin
        $sformat(fname, "%0s/bias.txt", dir);
        open_file(1);
        for (ot = 0; ot < ot_n; ot = ot + 1) begin
          load_line(2, ot);
          bias_file[ot] = word[C*PB-1:0];
        end
        $fclose(fd);
      end
    end
    if (reference) begin
      $sformat(fname, "%0s/acc_address.txt", dir);
      open_file(0);  // no header lines: the template reads addresses from the first line
      for (kk = 0; kk < n * kn; kk = kk + 1) begin
        read_line(addr_bits);
        addr_file[kk] = word[31:0];
      end
      $fclose(fd);
    end

    start = 1;
    @(posedge clk); #1;  // start sampled: cycle 0 begins
    start = 0;
    cycles = 0; psums = 0; psum_bad = 0;
    while (!done && cycles < max_cycles) begin
      @(posedge clk); #1;
      cycles = cycles + 1;
      if (psum_valid && reference) begin
        f = psum_fold;
        k = f % kn;
        ki = k / kw; kj = k % kw; oy = psum_pos / wo; ox = psum_pos % wo;
        word = psum_file[f * npad + (oy * s + ki) * wp + ox * s + kj];
        if (psum_vec !== word[C*PB-1:0]) psum_bad = psum_bad + 1;
      end
      if (psum_valid) psums = psums + 1;
    end

    out_bad = 0; acc_bad = 0;
    if ($value$plusargs("out=%s", out_path)) fd = $fopen(out_path, "w");
    else fd = 0;
    for (ot = 0; ot < ot_n; ot = ot + 1) begin
      for (kk = 0; kk < n; kk = kk + 1) begin
        out_raddr = ot * n + kk;
        #1;
        if (fd != 0) $fwrite(fd, "%b\n", out_rdata);
        if (reference) begin
          if (out_rdata !== out_file[ot * n + kk]) out_bad = out_bad + 1;
          // the template's accumulation over the addresses of position kk
          for (c = 0; c < C; c = c + 1) begin
            lane = $signed(bias_file[ot][c*PB +: PB]);
            acc = lane;
            for (it = 0; it < it_n; it = it + 1)
              for (k = 0; k < kn; k = k + 1) begin
                word = psum_file[(ot * it_n + it) * kn * npad + addr_file[kk * kn + k]];
                lane = $signed(word[c*PB +: PB]);
                acc = acc + lane;
              end
            expect_vec[c*PB +: PB] = (acc < 0) ? 0 : acc[PB-1:0];
          end
          if (expect_vec !== out_file[ot * n + kk]) acc_bad = acc_bad + 1;
        end
      end
    end
    if (fd != 0) $fclose(fd);
    $display("QMAP_RESULT cycles=%0d psums=%0d psum_mismatches=%0d outputs=%0d output_mismatches=%0d acc_mismatches=%0d format_errors=%0d done=%0d",
             cycles, psums, psum_bad, ot_n * n, out_bad, acc_bad, fmt_bad, done);
    $finish;
  end
endmodule
