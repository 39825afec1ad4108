// Package sim runs fleetd's real code — the pipeline, the claim protocol,
// recovery, the drain and the operator tools — as a whole fleet in one
// process, on the virtual clock of a testing/synctest bubble, against an
// in-memory S3 (internal/s3mem) behind a fault layer, and checks the queue's
// invariant over the final state and the history. A scenario is drawn from a
// seed: agents with different settings, specs, identical resubmissions and
// replacements, operator actions at random moments (some interrupted), node
// crashes and drains, network cuts, and faults on every request (errors before
// and after a write lands, lost answers, requests that land after their sender
// gave up, latency, SlowDown).
//
// Every store request goes through one bus (bus.go): a driver goroutine waits
// until every goroutine of the bubble is blocked, then lets one request move,
// chosen by the seeded RNG. Time is virtual and the order of requests is the
// seed's, so most seeds replay exactly; what the simulator cannot reach
// without hooks in the production code (the lister's poll jitter and the
// rescuer's start, both from math/rand/v2, and crypto/rand tokens) can still
// make a replay diverge, which is why every scenario records a trace.
package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// Mutations are deliberately broken rules, each applied in the store layer so
// that the production code needs no hooks; the simulator must find each.
type Mutations struct {
	// StripDeleteIfMatch sends every DELETE without its If-Match.
	StripDeleteIfMatch bool
	// UnknownAsNotLanded reports a write whose outcome the store could not
	// learn as a definite "no" (the last answer, or not landed).
	UnknownAsNotLanded bool
	// SkipConfirm answers the claim's confirm (HEAD pending/ after the lease)
	// with what the node read before the lease, not with what the store holds.
	SkipConfirm bool
}

// Options configures a scenario beyond what its seed draws.
type Options struct {
	Mutations Mutations
	Quirks    s3mem.Quirks
	// Store is the kind of store: "conditional" (DELETE honours If-Match:
	// AWS, versitygw), "versioned" (MinIO with versioning on: DELETE ignores
	// If-Match, so deletes name versions) or "" to draw it from the seed
	// (every third scenario versioned).
	Store store.DeleteMode
}

// Result is what a scenario found.
type Result struct {
	Seed       uint64
	Violations []string
	// Steps is the number of moves of the bus (requests sent and landed).
	Steps   int
	Virtual time.Duration
	hist    *history
	plan    string
}

// Trace returns the scenario's plan and its trace.
func (r *Result) Trace() string { return r.plan + r.hist.Trace() }

// Classes returns the kinds of violation found, sorted (the tag before the
// first ":" of each).
func (r *Result) Classes() []string {
	var out []string
	for _, v := range r.Violations {
		tag, _, _ := strings.Cut(v, ":")
		if !slices.Contains(out, tag) {
			out = append(out, tag)
		}
	}
	slices.Sort(out)
	return out
}

type scenario struct {
	seed   uint64
	opt    Options
	layout store.Layout
	store  *s3mem.Store
	bus    *bus
	hist   *history
	policy store.Policy
	rng    *rand.Rand // the plan's

	mu    sync.Mutex
	incs  []*incarnation
	live  map[string]*incarnation // node → its running incarnation
	gens  map[string]int
	tools sync.WaitGroup
	nTool int
	busy  int // tools running
	ended bool
	// scheduled: the plan adds a schedule, removed at the end of faults.
	scheduled bool
}

// event is one thing the plan does at a moment.
type event struct {
	at   time.Duration
	what string
	do   func()
}

// Run runs the scenario of seed. It must be called inside a synctest bubble
// (synctest.Test), which it leaves with every goroutine it started ended.
func Run(seed uint64, opt Options) *Result {
	layout := store.NewLayout("fleet", "")
	hist := newHistory(layout)
	if opt.Store == "" {
		opt.Store = store.IfMatchDeletes
		if seed%3 == 0 {
			opt.Store = store.VersionedDeletes
		}
	}
	if opt.Store == store.VersionedDeletes {
		opt.Quirks.Versioning, opt.Quirks.IgnoreDeleteIfMatch = true, true
	}
	storage := s3mem.New(opt.Quirks)
	s := &scenario{seed: seed, opt: opt, layout: layout, store: storage, hist: hist,
		rng:  rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
		live: map[string]*incarnation{}, gens: map[string]int{},
		policy: store.Policy{Attempts: 4, Timeout: time.Second, BaseDelay: 50 * time.Millisecond, MaxDelay: 500 * time.Millisecond}}
	s.bus = newBus(storage, hist, rand.New(rand.NewPCG(seed, 0xb5ad4eceda1ce2a9)), s.policy.Timeout)

	nodes, events, faults, end, plan := s.draw()
	stop := make(chan struct{})
	driverDone := make(chan struct{})
	go func() {
		defer close(driverDone)
		s.bus.run(stop)
	}()
	s.bus.setFaults(faults, true)
	for _, c := range nodes {
		s.restart(c)
	}
	t0 := time.Now()
	for _, e := range events {
		time.Sleep(time.Until(t0.Add(e.at)))
		e.do()
	}
	time.Sleep(time.Until(t0.Add(end)))

	// Quiescence: faults off, cut nodes heard again, dead ones restarted, the
	// lane resumed; then the fleet must settle every spec.
	hist.tracef("SIM", "END OF FAULTS: the fleet must now settle everything")
	s.bus.setFaults(faults, false)
	s.bus.heal()
	// Tools still running (a pause retrying its PUT) end first: the lane's
	// last word is then the resume below, not a pause that outlasted it.
	s.tools.Wait()
	for _, c := range nodes {
		s.mu.Lock()
		_, up := s.live[c.name]
		s.mu.Unlock()
		if !up {
			s.restart(c)
		}
	}
	if s.scheduled {
		// No more due times: the fleet settles what was submitted. A
		// removal that meets an add still under way (interrupted and
		// retried) repeats until the schedule is gone.
		s.tool("schedule", "tick", -1, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
			for {
				err := a.RemoveSchedule(ctx, "fleet", "tick")
				if err == nil || strings.Contains(err.Error(), "no schedule") || ctx.Err() != nil {
					return err
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
		s.tools.Wait()
	}
	s.tool("resume", "", 0, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
		_, err := a.Resume(ctx, "fleet", false)
		return err
	})
	settleBy := time.Now().Add(120 * time.Second)
	quietFrom := time.Now().Add(4 * time.Second) // held requests land within 3 attempt timeouts
	for time.Now().Before(settleBy) {
		time.Sleep(500 * time.Millisecond)
		if time.Now().After(quietFrom) && s.quiet() {
			break
		}
	}
	s.checkFinal()

	// Every process exits; the driver last, once nothing can send.
	s.mu.Lock()
	s.ended = true
	incs := slices.Clone(s.incs)
	s.mu.Unlock()
	for _, inc := range incs {
		inc.crash()
	}
	for _, inc := range incs {
		<-inc.done
	}
	s.tools.Wait()
	// A claim's keeper outlives the pipeline when nobody ended its claim; it
	// gives the lease up at its next renewal, which the dead process's store
	// refuses. Every keeper renews within a third of a ttl.
	time.Sleep(10 * time.Second)
	close(stop)
	<-driverDone

	s.checkHistory()
	s.bus.mu.Lock()
	steps := s.bus.steps
	s.bus.mu.Unlock()
	return &Result{Seed: seed, Violations: hist.violations, Steps: steps, Virtual: time.Since(t0), hist: hist, plan: plan}
}

func (s *scenario) restart(c nodeCfg) {
	s.mu.Lock()
	s.gens[c.name]++
	gen := s.gens[c.name]
	s.mu.Unlock()
	inc := s.startNode(c, gen)
	s.mu.Lock()
	s.incs = append(s.incs, inc)
	s.live[c.name] = inc
	s.mu.Unlock()
}

func (s *scenario) down(node string) *incarnation {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc := s.live[node]
	delete(s.live, node)
	return inc
}

// quiet reports whether the queue has settled: nothing pending, claimed or
// leased, no cell running, no tool at work.
func (s *scenario) quiet() bool {
	s.mu.Lock()
	busy := s.busy
	s.mu.Unlock()
	if busy > 0 || len(s.stuck()) > 0 {
		return false
	}
	s.hist.mu.Lock()
	defer s.hist.mu.Unlock()
	for _, r := range s.hist.runs {
		if r.end.IsZero() {
			return false
		}
	}
	return true
}

func (s *scenario) stuck() []string {
	var keys []string
	for _, l := range s.hist.lanes {
		for _, st := range []store.Area{store.Pending, store.Claimed, store.Leases} {
			for _, o := range s.store.Snapshot(l.Dir(st)) {
				if _, ok := l.ID(st, o.Key); ok {
					keys = append(keys, o.Key)
				}
			}
		}
		// A delayed spec (a retry, say) is work not yet due; every delay in
		// a scenario is short, so one left at the end was never promoted.
		for _, o := range s.store.Snapshot(l.DelayedDir()) {
			keys = append(keys, o.Key)
		}
	}
	return keys
}

// tool runs an operator action as its own process, with its own store
// handle; interrupt, if positive, cancels its context that long after it
// starts (Ctrl-C, a browser hanging up). When it returns, the process exits.
func (s *scenario) tool(kind, id string, n int, interrupt time.Duration, fn func(ctx context.Context, a *admin.Admin, rec *actionRec) error) {
	s.toolOn(s.layout, kind, id, n, interrupt, fn)
}

// toolOn is tool on the lane of layout.
func (s *scenario) toolOn(layout store.Layout, kind, id string, n int, interrupt time.Duration, fn func(ctx context.Context, a *admin.Admin, rec *actionRec) error) {
	s.mu.Lock()
	s.nTool++
	name := fmt.Sprintf("op%d", s.nTool)
	s.busy++
	s.mu.Unlock()
	h := newHandle(s.bus, name, "ops", kind, s.policy, s.seed, s.opt)
	log := slog_(s.hist, name)
	proto := protocol.New(protocol.Config{Layout: layout, Node: "ops", TTL: 5 * time.Second, MaxAttempts: 3, Logger: log}, h)
	a := admin.New(h, proto, layout, 1<<20)
	rec := &actionRec{kind: kind, id: id, n: n, start: time.Now(), h: h}
	s.hist.action(rec)
	what := fmt.Sprintf("TOOL %s %s", kind, id)
	if n >= 0 && id != "" {
		what += fmt.Sprintf(" n=%d", n)
	}
	if interrupt > 0 {
		what += fmt.Sprintf(" (interrupted after %v)", interrupt)
	}
	s.hist.tracef(name, "%s", what)
	s.tools.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if interrupt > 0 {
			t := time.AfterFunc(interrupt, cancel)
			defer t.Stop()
		}
		err := fn(ctx, a, rec)
		s.hist.mu.Lock()
		rec.end, rec.err, rec.done = time.Now(), err, err == nil
		s.hist.mu.Unlock()
		h.dead.Store(true) // the process exits: its claims' keepers give up
		if err != nil {
			s.hist.tracef(name, "TOOL %s %s failed: %v", kind, id, err)
		} else {
			s.hist.tracef(name, "TOOL %s %s done %s", kind, id, rec.result)
		}
		s.mu.Lock()
		s.busy--
		s.mu.Unlock()
	})
}
