package main

import (
	"fmt"
	"image/color"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/cellos/fleetd/internal/versitygw"
)

type report struct {
	opts       options
	smoke      bool
	started    time.Time
	throughput []throughput
	scaling    []scaling
	pickup     *pickup
	idle       *idle
	busy       []busyRow
	backlog    []backlog
	fleet      []fleet
	baseline   *baseline
	dead       []deadNode
	recovery   []recoveryCost
	latency    []latency
	stores     []storeRow
	notify     *notifyResult
	output     *outputResult
}

// S3's published rate per partitioned prefix: 3,500 writes and 5,500 reads/s.
const awsWritesPerPrefix, awsReadsPerPrefix = 3500.0, 5500.0

func (rep *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	md := rep.markdown()
	fmt.Print(md)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if len(rep.throughput) > 0 {
		return rep.chart(filepath.Join(dir, "throughput.png"))
	}
	return nil
}

func (rep *report) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# fleetd benchmark report\n\n")
	if rep.smoke {
		p("**Smoke run: tiny sizes; these numbers measure nothing.**\n\n")
	}
	p("Run %s, %s. Machine: %d cores, %s/%s, %s. Server: versitygw %s (POSIX backend) on 127.0.0.1, behind a request-counting proxy in the harness process. ",
		rep.started.UTC().Format(time.RFC3339), time.Since(rep.started).Round(time.Second), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), versitygw.Version)
	p("Supervisor: `/bin/true` for no-op specs, the test supervisor for timed cells. fleetd: poll interval 1 s unless noted, leases on (ttl 60 s), S3 rate limit off, log level info. Throughput runs are timed from the agent's start-up self-test passing to the last spec finished: start-up is paid once in an agent's life, and the raw runs they are compared with start ready. ")
	p("The machine is shared and noisy: compare ratios within this run, not absolute numbers across runs.\n\n")

	if len(rep.throughput) > 0 {
		p("## 1–2. Throughput vs concurrency, and the limit\n\n")
		p("%d no-op specs per row. *Raw req/s*: the same server driven without fleetd by as many goroutines, with fleetd's exact per-spec request mix. *Efficiency* = specs/s × requests/spec ÷ raw req/s.\n\n", rep.opts.specs)
		p("| concurrency | specs/s | S3 requests/spec | fleetd CPU ms/spec | peak RSS MB | raw req/s | limit specs/s | efficiency |")
		if rep.baseline != nil && rep.baseline.SpecsPerSec > 0 {
			p(" × 0.5.1 |\n|---|---|---|---|---|---|---|---|---|\n")
		} else {
			p("\n|---|---|---|---|---|---|---|---|\n")
		}
		for _, r := range rep.throughput {
			p("| %d | %.1f | %.2f | %.2f | %.1f | %.0f | %.1f | %.2f |", r.Concurrency, r.SpecsPerSec, r.ReqPerSpec, r.CPUmsPerSpec, r.PeakRSSMB, r.RawReqPerSec, r.RawReqPerSec/r.ReqPerSpec, r.Efficiency)
			if rep.baseline != nil && rep.baseline.SpecsPerSec > 0 {
				p(" %.0f× |", r.SpecsPerSec/rep.baseline.SpecsPerSec)
			}
			p("\n")
		}
		p("\n![throughput vs concurrency](throughput.png)\n\n")
	}
	if len(rep.scaling) > 0 {
		p("## 3. Scaling with real work\n\nCells sleep 100 ms (the test supervisor, a process per cell); 20×N specs. *N / cell time* = N / 0.1 s. *Server limit*: the server's raw request rate from N goroutines with fleetd's per-spec mix (as in scenario 2), ÷ fleetd's requests per spec in this run. *Machine limit*: the same requests from N goroutines with the same supervisor process started per spec (sleeping 100 ms), without fleetd: what this machine allows for the whole job on the cores it shares with the server. *Reachable* = the smallest of the three. Each row is %d pairs of runs, fleetd's then the machine-limit run's, back to back (the machine's speed drifts from minute to minute by more than the margins here, and a pair shares its minute): the figures are medians, *efficiency vs reachable* the median of the pairs' own ratios, each listed.\n\n", len(rep.scaling[0].Trials))
		p("| N | specs | specs/s | N / cell time | efficiency vs that | requests/spec | server limit specs/s | machine limit specs/s | reachable | efficiency vs reachable | pairs |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range rep.scaling {
			pairs := make([]string, len(r.Trials))
			for i, t := range r.Trials {
				pairs[i] = fmt.Sprintf("%.2f", t)
			}
			p("| %d | %d | %.1f | %.0f | %.2f | %.2f | %.0f | %.0f | %.0f | %.2f | %s |\n", r.N, r.Specs, r.SpecsPerSec, r.Ideal, r.Efficiency, r.ReqPerSpec, r.ServerLimit, r.MachineLimit, r.Reachable, r.EffReach, strings.Join(pairs, ", "))
		}
		p("\n")
	}
	if rep.pickup != nil {
		x := rep.pickup
		p("## 4. Pickup latency\n\nIdle agent, poll interval %d ms; %d specs submitted one at a time, each at a random moment of its own %d ms window on a fixed timeline; time from the PUT's completion to fleetd's `cell started` line.\n\n", x.PollMs, x.Specs, 2*x.PollMs)
		p("| p50 | p99 | max |\n|---|---|---|\n| %v | %v | %v |\n\n", x.P50.Round(time.Millisecond), x.P99.Round(time.Millisecond), x.Max.Round(time.Millisecond))
	}
	if rep.idle != nil {
		x := rep.idle
		p("## 5. Idle cost\n\nEmpty queue, default poll interval (5 s), measured over %.0f s.\n\n", x.Seconds)
		p("| CPU %% of one core | RSS MB | S3 requests/min |\n|---|---|---|\n| %.3f | %.1f | %.1f |\n\n", x.CPUPercent, x.RSSMB, x.ReqsPerMinute)
		p("By operation and what it touched (requests/min, one idle agent, ttl 60 s): `LIST pending` is the poll; `LIST leases`/`LIST claimed` are recovery scans; `recovery` is `recovery/scan.json`, through which agents take turns to scan.\n\n")
		p("| operation | area | requests/min |\n|---|---|---|\n")
		for _, op := range billedOps {
			for _, area := range sortedAreas(x.PerMin, op) {
				p("| %s | %s | %.2f |\n", op, area, x.PerMin[opArea{op, area}])
			}
		}
		p("\n")
	}
	if len(rep.backlog) > 0 {
		p("## 6. Backlog\n\nConcurrency 16; peak RSS after %v of work.\n\n", rep.opts.backlogRun)
		p("| pending specs | time to first cell ms | peak RSS MB |\n|---|---|---|\n")
		for _, r := range rep.backlog {
			p("| %d | %.0f | %.1f |\n", r.Pending, r.FirstCellMs, r.PeakRSSMB)
		}
		p("\n")
	}
	if len(rep.fleet) > 0 {
		p("## 7. Many agents on one queue\n\n%d no-op specs (the test supervisor, which records every start); each agent at concurrency 4. Requests exclude each agent's start-up self-test (7 requests, 3 of them 412 by design). Conflicts: 412 answers per spec. Wasted: requests per spec beyond the one-agent run's (the happy path with its LIST share). *Run twice*/*never run*: specs whose supervisor started more than once / never, from the supervisor's own records. *Machine limit*: the same requests from 4 × agents goroutines, each starting the same supervisor per spec, without fleetd: what this machine allows for the job with the server on the same cores. *CPU ms/spec* per party: all fleetd processes together, versitygw, and the harness (the counting proxy). *Machine*: the share of both cores busy while the job ran (/proc/stat) and the CPU it cost per spec, every process counted (supervisors too); the same for the machine-limit run. When both runs keep the cores busy, their throughputs stand in the inverse ratio of their CPU per spec: the gap is what the agents cost the machine beyond the bare requests, most of it LISTs: a LIST of the full queue (a %d-key page) costs versitygw %.1f ms and the harness (SDK and proxy) %.1f ms of CPU, measured before each run (first row).\n\n", rep.opts.fleetSpecs, min(rep.opts.fleetSpecs, 1000), rep.fleet[0].ListServerMs, rep.fleet[0].ListClientMs)
		p("| agents | specs/s | requests/spec | LIST/spec | GET/spec | conflicts/spec | wasted requests/spec | run twice | never run | machine limit specs/s | specs/s ÷ limit | CPU ms/spec: fleetd / server / proxy | machine: busy, CPU ms/spec | machine-limit run: busy, CPU ms/spec |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range rep.fleet {
			p("| %d | %.1f | %.2f | %.2f | %.2f | %.3f | %.2f | %d | %d | %.0f | %.2f | %.2f / %.2f / %.2f | %.0f%%, %.1f | %.0f%%, %.1f |\n", r.Agents, r.SpecsPerSec, r.ReqPerSpec, r.ByOp["LIST"], r.ByOp["GET"], r.ConflictsPer, r.WastedPerSpec, r.RunTwice, r.NeverRun, r.MachineLimit, r.SpecsPerSec/r.MachineLimit, r.FleetdCPU, r.ServerCPU, r.HarnessCPU, 100*r.MachineBusy, r.MachineCPU, 100*r.RawBusy, r.RawCPU)
		}
		p("\n")
	}
	if rep.baseline != nil {
		x := rep.baseline
		p("## 8. Baseline: the 0.5.1 way\n\n")
		if x.Skipped != "" {
			p("Skipped: %s.\n\n", x.Skipped)
		} else {
			p("%d specs processed sequentially with one `aws` CLI process per S3 operation (list-objects-v2 per poll; per spec `s3 mv` pending→claimed, `s3 cp` to a temp file, the supervisor, `s3 mv` claimed→completed), against the same server. %.1f s in all: **%.3f specs/s** (%.2f s per spec), extrapolated per spec to any count.\n\n", x.Specs, x.Seconds, x.SpecsPerSec, 1/x.SpecsPerSec)
		}
	}
	rep.costSections(p)
	rep.storeSection(p)
	if rep.notify != nil {
		rep.notify.markdown(p)
	}
	if rep.output != nil {
		rep.output.markdown(p)
	}
	rep.busyMarkdown(p)
	rep.targets(p)
	return b.String()
}

// targets lists the targets with where fleetd stands.
func (rep *report) targets(p func(string, ...any)) {
	p("## Targets\n\n| target | measured | met |\n|---|---|---|\n")
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	if len(rep.throughput) > 0 && rep.baseline != nil && rep.baseline.SpecsPerSec > 0 {
		best := rep.throughput[0]
		for _, r := range rep.throughput {
			if r.SpecsPerSec > best.SpecsPerSec {
				best = r
			}
		}
		ratio := best.SpecsPerSec / rep.baseline.SpecsPerSec
		p("| ≥ 1000× the 0.5.1 baseline (no-op) | %.0f× at concurrency %d | %s |\n", ratio, best.Concurrency, yes(ratio >= 1000))
		// On AWS the per-prefix request rate bounds specs/s: writes per spec
		// are the PUTs and DELETEs of the protocol (6: lease, claimed/, pending/,
		// result, claimed/, lease), reads 2 (GET, HEAD).
		awsSpecs := math.Min(awsWritesPerPrefix/6, awsReadsPerPrefix/2)
		p("| projected on AWS S3 (one prefix: 3,500 writes/s ÷ 6 writes per spec) | %.0f specs/s = %.0f× the baseline | — |\n", awsSpecs, awsSpecs/rep.baseline.SpecsPerSec)
	}
	for _, r := range rep.throughput {
		if r.Concurrency == 16 || r.Concurrency == 64 {
			p("| efficiency vs the limit ≥ 0.7 at concurrency %d | %.2f | %s |\n", r.Concurrency, r.Efficiency, yes(r.Efficiency >= 0.7))
		}
	}
	for _, r := range rep.scaling {
		if r.N == 64 {
			p("| scaling efficiency ≥ 0.9 at N = 64 | %.2f | %s |\n", r.Efficiency, yes(r.Efficiency >= 0.9))
		}
	}
	if x := rep.pickup; x != nil {
		limit := time.Duration(x.PollMs)*time.Millisecond/2 + 50*time.Millisecond
		p("| pickup p50 ≤ poll/2 + 50 ms (%v) | %v | %s |\n", limit, x.P50.Round(time.Millisecond), yes(x.P50 <= limit))
	}
	if x := rep.idle; x != nil {
		p("| idle ≤ 1%% of a core, ≤ 40 MB RSS | %.3f%%, %.1f MB | %s |\n", x.CPUPercent, x.RSSMB, yes(x.CPUPercent <= 1 && x.RSSMB <= 40))
	}
	if n := len(rep.backlog); n >= 2 {
		lo, hi := rep.backlog[0], rep.backlog[n-1]
		growth := hi.PeakRSSMB/lo.PeakRSSMB - 1
		p("| backlog RSS flat within 20%% (%d → %d) | %.1f → %.1f MB (%+.0f%%) | %s |\n", lo.Pending, hi.Pending, lo.PeakRSSMB, hi.PeakRSSMB, 100*growth, yes(growth <= 0.2))
	}
	if len(rep.throughput) > 0 {
		p("| requests/spec no more than the protocol needs (9 + LIST share) | %.2f at concurrency %d | %s |\n", rep.throughput[0].ReqPerSpec, rep.throughput[0].Concurrency, yes(rep.throughput[0].ReqPerSpec < 9.5))
	}
	for _, r := range rep.fleet {
		if r.Agents == 8 || r.Agents == 16 {
			p("| wasted requests/spec with %d agents ≤ 1 | %.2f | %s |\n", r.Agents, r.WastedPerSpec, yes(r.WastedPerSpec <= 1))
		}
		if r.Agents == 16 {
			p("| 16 agents: no spec run twice, none left unrun | %d run twice, %d never | %s |\n", r.RunTwice, r.NeverRun, yes(r.RunTwice == 0 && r.NeverRun == 0))
			p("| 16 agents: throughput ≥ 0.85 of the machine's limit for the job | %.1f of %.0f specs/s = %.2f (cores %.0f%% / %.0f%% busy; CPU per spec %.1f / %.1f ms = %.2f) | %s |\n", r.SpecsPerSec, r.MachineLimit, r.SpecsPerSec/r.MachineLimit, 100*r.MachineBusy, 100*r.RawBusy, r.RawCPU, r.MachineCPU, r.RawCPU/r.MachineCPU, yes(r.SpecsPerSec >= 0.85*r.MachineLimit))
		}
	}
	// Issue 23.
	if o := rep.output; o != nil && len(o.Rows) == 2 {
		off, on := o.Rows[0], o.Rows[1]
		p("| output off: requests/spec 8 (+ LIST share), no output PUT | %.2f, %.2f output PUTs | %s |\n", off.ReqPerSpec, off.OutputPUTs, yes(off.ReqPerSpec < 8.5 && off.OutputPUTs == 0))
		p("| output on: one PUT more per spec (8 → 9) | %.2f, %.2f output PUTs | %s |\n", on.ReqPerSpec, on.OutputPUTs, yes(on.OutputPUTs == 1 && on.ReqPerSpec < 9.5))
		p("| output on: no request per idle poll | %.0f on output/ over %.0f polls | %s |\n", o.IdleOutputs, o.IdlePolls, yes(o.IdleOutputs == 0))
	}
	// Issue 12.
	if x := rep.idle; x != nil {
		p("| idle ≤ 15 S3 requests/min per agent, default settings | %.1f | %s |\n", x.ReqsPerMinute, yes(x.ReqsPerMinute <= 15))
	}
	for _, r := range rep.busy {
		p("| busy ≤ 20 S3 requests/min per host whatever the cells (issue 19), %d cells | %.1f | %s |\n", r.Cells, r.ReqsPerMinute, yes(r.ReqsPerMinute <= 20))
	}
	for i, d := range rep.dead {
		p("| dead node's spec runs elsewhere within ~2 × ttl (trial %d, ttl %v) | %.1f s = %.2f × ttl | %s |\n", i+1, d.TTL, d.Recovery.Seconds(), d.Recovery.Seconds()/d.TTL.Seconds(), yes(d.Recovery <= 2*d.TTL))
	}
	if n := len(rep.recovery); n >= 2 {
		// Flat from the second row on: a lone agent scans half as often (section 11).
		lo, hi := rep.recovery[1], rep.recovery[n-1]
		lc, ll := lo.recoveryLists()
		hc, hl := hi.recoveryLists()
		growth := (hc+hl)/(lc+ll) - 1
		p("| recovery LISTs/min flat with the fleet (%d → %d agents within 25%%) | %.1f → %.1f (%+.0f%%) | %s |\n", lo.Agents, hi.Agents, lc+ll, hc+hl, 100*growth, yes(growth <= 0.25))
	}
	for _, r := range rep.scaling {
		if r.N == 8 || r.N == 32 || r.N == 64 {
			p("| scaling efficiency vs reachable ≥ 0.85 at N = %d | %.2f | %s |\n", r.N, r.EffReach, yes(r.EffReach >= 0.85))
		}
	}
	p("\n")
}

func (rep *report) chart(path string) error {
	pl := plot.New()
	pl.Title.Text = "fleetd throughput vs concurrency (no-op specs)"
	pl.X.Label.Text = "concurrency"
	pl.Y.Label.Text = "specs/s (log)"
	pl.Y.Scale = plot.LogScale{}
	pl.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var fleetd, limit, base plotter.XYs
	for _, r := range rep.throughput {
		fleetd = append(fleetd, plotter.XY{X: float64(r.Concurrency), Y: r.SpecsPerSec})
		limit = append(limit, plotter.XY{X: float64(r.Concurrency), Y: r.RawReqPerSec / r.ReqPerSpec})
		if rep.baseline != nil && rep.baseline.SpecsPerSec > 0 {
			base = append(base, plotter.XY{X: float64(r.Concurrency), Y: rep.baseline.SpecsPerSec})
		}
	}
	add := func(name string, xys plotter.XYs, c color.Color) error {
		if len(xys) == 0 {
			return nil
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, pts.Color = c, c
		pl.Add(l, pts)
		pl.Legend.Add(name, l, pts)
		return nil
	}
	if err := add("fleetd", fleetd, color.RGBA{B: 200, A: 255}); err != nil {
		return err
	}
	if err := add("the limit (server, same request mix)", limit, color.RGBA{G: 140, A: 255}); err != nil {
		return err
	}
	if err := add("0.5.1 way (aws CLI, sequential)", base, color.RGBA{R: 200, A: 255}); err != nil {
		return err
	}
	pl.Legend.Top = true
	pl.Legend.Left = true
	return pl.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

// storeSection is scenario 14: the throughput rows on each store.
func (rep *report) storeSection(p func(string, ...any)) {
	if len(rep.stores) == 0 {
		return
	}
	p("## 14. Stores: versitygw and MinIO, same run\n\n")
	p("%d no-op specs per row, one agent, as scenario 1, on each store in turn (MinIO with versioning on, where fleetd runs in the versioned delete mode: docs/PROTOCOL.md, \"Stores\"). Requests per spec by operation from the proxy, self-test excluded; LISTV is ListObjectVersions, DELETEV DeleteObjects.\n\n", rep.opts.specs)
	p("| store | delete mode | concurrency | specs/s | S3 requests/spec | by operation |\n|---|---|---|---|---|---|\n")
	for _, r := range rep.stores {
		ops := slices.Sorted(maps.Keys(r.ByOp))
		parts := make([]string, 0, len(ops))
		for _, op := range ops {
			parts = append(parts, fmt.Sprintf("%s %.2f", op, r.ByOp[op]))
		}
		p("| %s %s | %s | %d | %.1f | %.2f | %s |\n", r.Kind, r.Version, r.Mode, r.Concurrency, r.SpecsPerSec, r.ReqPerSpec, strings.Join(parts, ", "))
	}
	p("\n")
}
