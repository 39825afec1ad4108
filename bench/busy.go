package main

// Scenario 17: what a busy host pays to say it is alive. One agent at
// default settings (ttl 60 s, poll 5 s) with every slot running a long
// cell; its requests counted at the proxy. Liveness is one session per
// agent (issue 19): the cost must not grow with the number of cells.

import (
	"fmt"
	"path/filepath"
	"time"
)

// busyRow is one row of scenario 17.
type busyRow struct {
	Cells         int
	Seconds       float64
	ReqsPerMinute float64
	PerMin        map[opArea]float64
}

// busy runs cells long cells on one agent and counts its requests for d once
// they all run and warm has passed: the agent's first recovery scans read each
// lease once (it is remembered by its ETag: a lease is not rewritten while its
// cell runs), a cost per cell, not per minute.
func (r *rig) busy(cells int, warm, d time.Duration) (busyRow, error) {
	row := busyRow{Cells: cells, Seconds: d.Seconds()}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	never := filepath.Join(r.dir, "never-"+bucket) // no cell ends on its own
	if err := r.submit(bucket, cells, fmt.Sprintf(`{"waitFor":%q}`, never)); err != nil {
		return row, err
	}
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(cells),
		"CELLOS_FLEET_SUPERVISOR": r.supervisor, "CELLOS_FLEET_DRAIN_TIMEOUT_MS": "1000"}, true)
	if err != nil {
		return row, err
	}
	defer a.stop()
	deadline := time.After(5 * time.Minute)
	for range cells {
		select {
		case <-a.cellStart:
		case <-deadline:
			return row, fmt.Errorf("busy: not all %d cells started within 5 minutes", cells)
		}
	}
	time.Sleep(warm)
	r.counts.reset()
	time.Sleep(d)
	ops := r.counts.ops()
	row.PerMin = map[opArea]float64{}
	var total int64
	for k, v := range ops {
		row.PerMin[k] = float64(v) / d.Minutes()
		total += v
	}
	row.ReqsPerMinute = float64(total) / d.Minutes()
	return row, nil
}

// busyMarkdown writes scenario 17.
func (rep *report) busyMarkdown(p func(string, ...any)) {
	if len(rep.busy) == 0 {
		return
	}
	p("## 17. Busy host: what saying \"alive\" costs\n\nOne agent, default settings (ttl 60 s, poll interval 5 s), every slot running a cell that does not end; its requests counted at the proxy for %.0f s, from 150 s after all cells run: past the first recovery scan (an agent scans only after a ttl of its own renewals landing), which reads each lease once and then remembers it by its ETag (%d GETs at 64 cells, once). Before sessions (issue 19: every lease renewed every ttl/3 and read back) the same host made 79 requests a minute at 16 cells, 48 of them lease PUTs and 16 lease GETs. Now the agent renews one session object every ttl/3, whatever the number of cells.\n\n", rep.busy[0].Seconds, 64)
	p("| cells | requests/min | session PUT/min | lease requests/min | LIST pending/min | recovery/min | $ per host-month |\n|---|---|---|---|---|---|---|\n")
	defer p("\nThe rest is the poll: an agent lists `pending/` every poll interval even with every slot busy (12 a minute at 5 s), and its share of the fleet's recovery scans (the turn marker, LISTs of `leases/` and `sessions/`).\n")
	for _, r := range rep.busy {
		var lease, recovery float64
		byOp := map[string]float64{}
		for k, v := range r.PerMin {
			byOp[k.Op] += v * minutesPerMonth
			switch k.Area {
			case "leases":
				lease += v
			case "recovery", "claimed":
				recovery += v
			}
		}
		p("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f |\n", r.Cells, r.ReqsPerMinute, r.PerMin[opArea{"PUT", "sessions"}],
			lease, r.PerMin[opArea{"LIST", "pending"}], recovery, dollars(byOp))
	}
	p("\n")
}
