package main

// Scenario 16: what a spec's output (CELLOS_FLEET_OUTPUT_BYTES) costs in
// requests: one PUT per finished spec, none per idle poll.

import (
	"fmt"
	"slices"
	"time"
)

// outputRow is one row of scenario 16: a throughput run with output on or off.
type outputRow struct {
	Setting     string // CELLOS_FLEET_OUTPUT_BYTES
	Concurrency int
	Specs       int
	SpecsPerSec float64
	ReqPerSpec  float64
	ByOp        map[string]float64
	OutputPUTs  float64 // PUTs of output/ per spec
}

// outputResult is scenario 16.
type outputResult struct {
	Rows []outputRow
	// Idle is an idle agent with output on, polling every second: what it
	// asks of output/ (nothing) and in all.
	Idle        idle
	IdlePolls   float64 // LISTs of pending/ in the window
	IdleOutputs float64 // requests on output/ in the window
}

func (r *rig) outputScenario(o options) (outputResult, error) {
	var res outputResult
	for _, setting := range []string{"0", "1048576"} {
		row, err := r.outputRun(setting, 4, o.specs)
		if err != nil {
			return res, fmt.Errorf("output %s: %w", setting, err)
		}
		res.Rows = append(res.Rows, row)
	}
	d := min(o.idle, time.Minute)
	i, err := r.idleWith(d, map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": "1000"})
	if err != nil {
		return res, fmt.Errorf("output idle: %w", err)
	}
	res.Idle = i
	for k, v := range i.PerMin {
		if k.Op == "LIST" && k.Area == "pending" {
			res.IdlePolls += v * d.Minutes()
		}
		if k.Area == "output" {
			res.IdleOutputs += v * d.Minutes()
		}
	}
	return res, nil
}

// outputRun is scenario 1's run with CELLOS_FLEET_OUTPUT_BYTES=setting.
func (r *rig) outputRun(setting string, c, n int) (outputRow, error) {
	row := outputRow{Setting: setting, Concurrency: c, Specs: n}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return row, err
	}
	r.counts.reset()
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(c), "CELLOS_FLEET_POLL_INTERVAL_MS": "1000",
		"CELLOS_FLEET_OUTPUT_BYTES": setting}, false)
	if err != nil {
		return row, err
	}
	werr := waitFinished(10*time.Minute, int64(n), a)
	elapsed := time.Since(a.readyAt())
	ops := r.counts.ops()
	var reqs int64
	for k, v := range ops {
		if k.Area != "selftest" {
			reqs += v
		}
	}
	row.ByOp = perOp(ops, float64(n))
	row.OutputPUTs = float64(ops[opArea{"PUT", "output"}]) / float64(n)
	if _, err := a.stop(); err != nil && werr == nil {
		werr = err
	}
	if werr != nil {
		return row, werr
	}
	row.SpecsPerSec = float64(n) / elapsed.Seconds()
	row.ReqPerSpec = float64(reqs) / float64(n)
	return row, nil
}

func (o *outputResult) markdown(p func(string, ...any)) {
	p("## 16. Output per spec\n\nNo-op specs (`/bin/true`: its output is empty, and the PUT is made all the same), one agent at concurrency 4, poll interval 1 s; requests counted at the proxy, self-test excluded. `CELLOS_FLEET_OUTPUT_BYTES=0` turns output off; 1048576 is the default.\n\n")
	p("| output bytes | specs | specs/s | requests/spec | PUT output/ per spec | by operation |\n|---|---|---|---|---|---|\n")
	for _, r := range o.Rows {
		ops := make([]string, 0, len(r.ByOp))
		for op := range r.ByOp {
			ops = append(ops, op)
		}
		slices.Sort(ops)
		var parts string
		for i, op := range ops {
			if i > 0 {
				parts += ", "
			}
			parts += fmt.Sprintf("%s %.2f", op, r.ByOp[op])
		}
		p("| %s | %d | %.1f | %.2f | %.2f | %s |\n", r.Setting, r.Specs, r.SpecsPerSec, r.ReqPerSpec, r.OutputPUTs, parts)
	}
	p("\nIdle, output on, polling every second for %.0f s: %.0f polls, %.1f requests a minute in all, **%.0f requests on output/**.\n\n",
		o.Idle.Seconds, o.IdlePolls, o.Idle.ReqsPerMinute, o.IdleOutputs)
}
