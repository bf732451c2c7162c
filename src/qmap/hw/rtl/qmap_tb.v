// Plain Verilog testbench of qmap_core (no Python needed): reads an exported folder (+dir=PATH), loads the
// memories, runs the layer, checks every psum vector and every output against the files, and prints
//   QMAP_RESULT cycles=<n> psums=<n> psum_mismatches=<n> outputs=<n> output_mismatches=<n>
// Parameters must match the export (qmap.hw.sim passes them); the files' three '#...#' header lines are skipped.
module qmap_tb;
  parameter R = 8, C = 8, WB = 4, AB = 4, PB = 16, WP = 6, NPAD = 36, WO = 4, N = 16;
  parameter KH = 3, KW = 3, S = 1, IT = 1, OT = 1;
  localparam K = KH * KW;
  localparam F = OT * IT * K;
  localparam W_IN = (R * AB > R * WB) ? R * AB : R * WB;
  localparam W_MAX = (W_IN > C * PB) ? W_IN : C * PB;
  localparam MAX_CYCLES = 10 * (F * (N + R + C) + N + R + C);

  reg clk = 0, rst = 1, start = 0, act_we = 0, w_we = 0;
  reg [31:0] act_waddr = 0, w_waddr = 0, out_raddr = 0;
  reg [R*AB-1:0] act_wdata = 0;
  reg [R*WB-1:0] w_wdata = 0;
  wire [C*PB-1:0] out_rdata, psum_vec;
  wire done, psum_valid;
  wire [31:0] psum_fold, psum_pos;
  always #5 clk = ~clk;

  qmap_core #(.R(R), .C(C), .WB(WB), .AB(AB), .PB(PB), .WP(WP), .NPAD(NPAD), .WO(WO), .N(N), .KH(KH),
              .KW(KW), .S(S), .IT(IT), .OT(OT)) dut (
      .clk(clk), .rst(rst), .start(start), .act_we(act_we), .act_waddr(act_waddr), .act_wdata(act_wdata),
      .w_we(w_we), .w_waddr(w_waddr), .w_wdata(w_wdata), .out_raddr(out_raddr), .out_rdata(out_rdata),
      .done(done), .psum_valid(psum_valid), .psum_vec(psum_vec), .psum_fold(psum_fold), .psum_pos(psum_pos));

  reg [R*AB-1:0] act_file [0:IT*NPAD-1];
  reg [R*WB-1:0] w_file [0:F*C-1];
  reg [C*PB-1:0] psum_file [0:F*NPAD-1];
  reg [C*PB-1:0] out_file [0:OT*N-1];
  reg [8*512-1:0] dir, fname;
  reg [8*256-1:0] header;
  integer fd, i, n_lines, ot, it, k, f, cycles, psums, psum_bad, out_bad, ki, kj, oy, ox;
  reg [W_MAX-1:0] word;

  // Open fname, skip the three header lines; returns the descriptor (aborts when missing).
  task open_data;
    begin
      fd = $fopen(fname, "r");
      if (fd == 0) begin
        $display("QMAP_ERROR cannot open %0s", fname);
        $finish;
      end
      for (i = 0; i < 3; i = i + 1) n_lines = $fgets(header, fd);
    end
  endtask

  initial begin
    if (!$value$plusargs("dir=%s", dir)) begin
      $display("QMAP_ERROR missing +dir=PATH");
      $finish;
    end
    for (it = 0; it < IT; it = it + 1) begin
      $sformat(fname, "%0s/activation_tile%0d.txt", dir, it);
      open_data;
      for (i = 0; i < NPAD; i = i + 1) begin n_lines = $fscanf(fd, "%b\n", word); act_file[it*NPAD + i] = word[R*AB-1:0]; end
      $fclose(fd);
    end
    for (ot = 0; ot < OT; ot = ot + 1) begin
      for (it = 0; it < IT; it = it + 1) begin
        for (k = 0; k < K; k = k + 1) begin
          f = (ot * IT + it) * K + k;
          $sformat(fname, "%0s/weight_itile%0d_otile%0d_kij%0d.txt", dir, it, ot, k);
          open_data;
          for (i = 0; i < C; i = i + 1) begin n_lines = $fscanf(fd, "%b\n", word); w_file[f*C + i] = word[R*WB-1:0]; end
          $fclose(fd);
          if (IT == 1 && OT == 1) $sformat(fname, "%0s/psum_kij%0d.txt", dir, k);
          else $sformat(fname, "%0s/psum_itile%0d_otile%0d_kij%0d.txt", dir, it, ot, k);
          open_data;
          for (i = 0; i < NPAD; i = i + 1) begin
            n_lines = $fscanf(fd, "%b\n", word);
            psum_file[f*NPAD + i] = word[C*PB-1:0];
          end
          $fclose(fd);
        end
      end
      if (OT == 1) $sformat(fname, "%0s/out.txt", dir);
      else $sformat(fname, "%0s/out_otile%0d.txt", dir, ot);
      open_data;
      for (i = 0; i < N; i = i + 1) begin n_lines = $fscanf(fd, "%b\n", word); out_file[ot*N + i] = word[C*PB-1:0]; end
      $fclose(fd);
    end

    repeat (2) @(posedge clk);
    #1 rst = 0;
    for (i = 0; i < IT*NPAD; i = i + 1) begin
      act_we = 1; act_waddr = i; act_wdata = act_file[i];
      @(posedge clk); #1;
    end
    act_we = 0;
    for (i = 0; i < F*C; i = i + 1) begin
      w_we = 1; w_waddr = i; w_wdata = w_file[i];
      @(posedge clk); #1;
    end
    w_we = 0;
    start = 1;
    @(posedge clk); #1;  // start sampled: cycle 0 begins
    start = 0;
    cycles = 0; psums = 0; psum_bad = 0;
    while (!done && cycles < MAX_CYCLES) begin
      @(posedge clk); #1;
      cycles = cycles + 1;
      if (psum_valid) begin
        f = psum_fold;
        k = f % K;
        ki = k / KW; kj = k % KW; oy = psum_pos / WO; ox = psum_pos % WO;
        word = psum_file[f*NPAD + (oy*S + ki)*WP + ox*S + kj];
        if (psum_vec !== word[C*PB-1:0]) psum_bad = psum_bad + 1;
        psums = psums + 1;
      end
    end
    out_bad = 0;
    for (i = 0; i < OT*N; i = i + 1) begin
      out_raddr = i;
      #1;
      if (out_rdata !== out_file[i]) out_bad = out_bad + 1;
    end
    $display("QMAP_RESULT cycles=%0d psums=%0d psum_mismatches=%0d outputs=%0d output_mismatches=%0d done=%0d",
             cycles, psums, psum_bad, OT*N, out_bad, done);
    $finish;
  end
endmodule
