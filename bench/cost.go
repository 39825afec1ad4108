package main

// Scenarios of issue 12, what a fleet costs: requests by operation when idle
// and per spec, how fast a dead node's spec comes back, what recovery costs as
// the fleet grows, and the round trips on a spec's critical path when every
// request takes 20 ms.

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// billedOps are S3's operations in report order.
var billedOps = []string{"GET", "PUT", "COPY", "HEAD", "DELETE", "LIST"}

// perOp sums counts by operation over every area but the start-up self-test
// (7 requests per agent, not a cost of the work measured), divided by div.
func perOp(m map[opArea]int64, div float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if k.Area != "selftest" {
			out[k.Op] += float64(v) / div
		}
	}
	return out
}

// sum adds the values of a by-operation map.
func sum(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}

// countWork is the requests in m apart from the self-test.
func countWork(m map[opArea]int64) int64 {
	var n int64
	for k, v := range m {
		if k.Area != "selftest" {
			n += v
		}
	}
	return n
}

// deadNode is one trial of the dead-node scenario.
type deadNode struct {
	TTL      time.Duration
	Recovery time.Duration // kill -9 of the holder → another agent's "cell started"
}

// deadNode runs 4 agents, kills the one running the only spec with SIGKILL in
// the middle of its cell, and times until another agent starts that spec.
// ttl is short to keep the wait short; the poll interval is scaled with it
// (1 s against ttl 10 s, about the defaults' 5 s against 60 s) so the pickup
// after recovery weighs what it weighs at the defaults.
func (r *rig) deadNode(ttl time.Duration) (deadNode, error) {
	res := deadNode{TTL: ttl}
	bucket, err := r.newBucket()
	if err != nil {
		return res, err
	}
	var agents []*agent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i := range 4 {
		a, err := r.startAgent(bucket, map[string]string{
			"CELLOS_FLEET_LEASE_TTL_MS": fmt.Sprint(ttl.Milliseconds()), "CELLOS_FLEET_POLL_INTERVAL_MS": "1000",
			"CELLOS_FLEET_SUPERVISOR": r.supervisor, "CELLOS_FLEET_NODE_ID": fmt.Sprintf("dead-%d", i),
			// The recovered cell sleeps on; stopping the survivors must not wait for it.
			"CELLOS_FLEET_DRAIN_TIMEOUT_MS": "500", "CELLOS_FLEET_STOP_GRACE_MS": "500",
		}, false)
		if err != nil {
			return res, err
		}
		agents = append(agents, a)
	}
	// Longer than the whole trial: the killed node's cell must not be able to
	// finish, and the survivor's run is stopped at the end.
	sleep := fmt.Sprintf(`{"sleepMs":%d}`, (4 * ttl).Milliseconds())
	if err := r.submit(bucket, 1, sleep); err != nil {
		return res, err
	}
	const id = "spec-000000"
	startedOn := func(skip *agent) (*agent, time.Time) {
		for _, a := range agents {
			if t := a.cellLog()[id].started; a != skip && !t.IsZero() {
				return a, t
			}
		}
		return nil, time.Time{}
	}
	var holder *agent
	for deadline := time.Now().Add(time.Minute); holder == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return res, errors.New("the spec did not start within a minute")
		}
		holder, _ = startedOn(nil)
	}
	time.Sleep(ttl / 2) // mid-cell: past a renewal, the lease fresh
	holder.kill()
	killed := time.Now()
	agents = slices.DeleteFunc(agents, func(a *agent) bool { return a == holder })
	for deadline := killed.Add(3*ttl + 30*time.Second); ; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("no other agent started the spec within %v of the kill", 3*ttl+30*time.Second)
		}
		if a, t := startedOn(holder); a != nil {
			res.Recovery = t.Sub(killed)
			return res, nil
		}
	}
}

// recoveryCost is one row of the recovery-cost scenario: what k idle agents
// spend on finding dead nodes' work, per minute.
type recoveryCost struct {
	Agents int
	TTL    time.Duration
	PerMin map[opArea]float64
}

// recoveryCost runs k idle agents at a short ttl (so a minute holds many
// recovery periods) and counts the fleet's requests per minute by operation
// and area: LISTs of claimed/ and leases/ are the scans, PUT and HEAD of
// recovery/ the turn-taking.
func (r *rig) recoveryCost(k int, ttl, window time.Duration) (recoveryCost, error) {
	row := recoveryCost{Agents: k, TTL: ttl}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	var agents []*agent
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	for i := range k {
		a, err := r.startAgent(bucket, map[string]string{
			"CELLOS_FLEET_LEASE_TTL_MS": fmt.Sprint(ttl.Milliseconds()),
			"CELLOS_FLEET_NODE_ID":      fmt.Sprintf("idle-%d", i),
		}, false)
		if err != nil {
			return row, err
		}
		agents = append(agents, a)
	}
	time.Sleep(ttl) // every agent past start-up and its first offer
	r.counts.reset()
	time.Sleep(window)
	row.PerMin = map[opArea]float64{}
	for k, v := range r.counts.ops() {
		row.PerMin[k] = float64(v) / window.Minutes()
	}
	return row, nil
}

// recoveryLists is the fleet's LISTs of claimed/ and leases/ per minute.
func (c recoveryCost) recoveryLists() (claimed, leases float64) {
	return c.PerMin[opArea{"LIST", "claimed"}], c.PerMin[opArea{"LIST", "leases"}]
}

// latency is one row of the latency scenario.
type latency struct {
	Build       string // "this build" or the -compare binary
	Concurrency int
	Specs       int
	SpecsPerSec float64
	ReqMs       float64 // median request time at the proxy, delay included
	// Medians per spec, in ms.
	SeenToStart, ExitToDurable, DurableToDone float64
}

// RTs converts a phase's time to round trips of a median request.
func (l latency) RTs(ms float64) float64 { return ms / l.ReqMs }

// latency runs n no-op specs through one agent at concurrency c with every
// request delayed by delay at the proxy, and times each spec's phases from the
// proxy's trace and fleetd's log: spec seen (its GET of pending/ sent) → cell
// started; cell ended → result durable (PUT of completed/ answered); result
// durable → claim ended (its last DELETE answered), which holds the worker
// slot and so also sets the pace.
func (r *rig) latency(bin, build string, c, n int, delay time.Duration) (latency, error) {
	row := latency{Build: build, Concurrency: c, Specs: n}
	bucket, err := r.newBucket()
	if err != nil {
		return row, err
	}
	if err := r.submit(bucket, n, ""); err != nil {
		return row, err
	}
	r.delay.Store(int64(delay))
	defer r.delay.Store(0)
	r.counts.reset()
	r.counts.setTracing(true)
	defer r.counts.setTracing(false)
	saved := r.fleetd
	r.fleetd = bin
	a, err := r.startAgent(bucket, map[string]string{"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(c), "CELLOS_FLEET_POLL_INTERVAL_MS": "1000"}, false)
	r.fleetd = saved
	if err != nil {
		return row, err
	}
	werr := waitFinished(10*time.Minute, int64(n), a)
	done := time.Now()
	cells := a.cellLog()
	if _, err := a.stop(); err != nil || werr != nil {
		return row, errors.Join(werr, err)
	}

	type specTimes struct{ seen, durable, last time.Time }
	specs := map[string]*specTimes{}
	var reqMs []float64
	first := done
	for _, t := range r.counts.traced() {
		reqMs = append(reqMs, float64(t.end.Sub(t.start).Microseconds())/1000)
		s := specs[t.id]
		if s == nil {
			s = &specTimes{}
			specs[t.id] = s
		}
		switch {
		case t.op == "GET" && t.area == "pending" && s.seen.IsZero():
			s.seen = t.start
			if t.start.Before(first) {
				first = t.start
			}
		case t.op == "PUT" && t.area == "completed":
			s.durable = t.end
		}
		if t.end.After(s.last) {
			s.last = t.end
		}
	}
	var seenToStart, exitToDurable, durableToDone []float64
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for id, s := range specs {
		ct, ok := cells[id]
		if !ok || s.seen.IsZero() || s.durable.IsZero() {
			continue
		}
		seenToStart = append(seenToStart, ms(ct.started.Sub(s.seen)))
		exitToDurable = append(exitToDurable, ms(s.durable.Sub(ct.ended)))
		durableToDone = append(durableToDone, ms(s.last.Sub(s.durable)))
	}
	if len(seenToStart) == 0 {
		return row, errors.New("no spec traced end to end")
	}
	row.SpecsPerSec = float64(n) / done.Sub(first).Seconds()
	row.ReqMs = median(reqMs)
	row.SeenToStart, row.ExitToDurable, row.DurableToDone = median(seenToStart), median(exitToDurable), median(durableToDone)
	return row, nil
}

func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// runCounts reads the test supervisor's events file: how many times each spec
// id's cell started.
func runCounts(path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	runs := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "start" {
			runs[f[1]]++
		}
	}
	return runs, nil
}

// sortedAreas lists the areas of m's keys for op, in a stable order.
func sortedAreas(m map[opArea]float64, op string) []string {
	var areas []string
	for k := range maps.Keys(m) {
		if k.Op == op {
			areas = append(areas, k.Area)
		}
	}
	slices.Sort(areas)
	return areas
}
