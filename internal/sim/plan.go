package sim

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/store"
)

func slog_(h *history, who string) *slog.Logger { return slog.New(&logHandler{h: h, who: who}) }

// specDef is one spec id of a scenario and what its cell does.
type specDef struct {
	id    string
	ms    int
	exit  int
	panic int
	lastN int         // the submission last made of it
	pads  map[int]int // n → its padding: one submission, one set of bytes
}

// body is the spec's bytes for submission n; pad varies its size around the
// smaller agents' limit.
func (d *specDef) body(n, pad int) []byte {
	if p, ok := d.pads[n]; ok {
		pad = p
	}
	d.pads[n] = pad
	return fmt.Appendf(nil, `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":%q,"n":%d,"ms":%d,"exit":%d,"panic":%d,"pad":%q}}`,
		d.id, n, d.ms, d.exit, d.panic, strings.Repeat("x", pad))
}

// draw draws the scenario from the seed: the agents, the events, the faults,
// and when the faults end.
func (s *scenario) draw() (nodes []nodeCfg, events []event, faults Faults, end time.Duration, plan string) {
	rng := s.rng
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, store %s\n", s.seed, s.opt.Store)
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Millisecond }
	lanes := rng.IntN(3) == 0 // some nodes serve lane x too, and specs go there
	for i := range 2 + rng.IntN(3) {
		c := nodeCfg{name: fmt.Sprintf("n%d", i+1), ttl: time.Duration(3+rng.IntN(4)) * time.Second,
			concurrency: 1 + rng.IntN(3), maxAttempts: 1 + rng.IntN(3), maxSpecBytes: 1 << 20,
			poll: ms(500, 1500), rate: 1 + (rng.Float64()-0.5)*0.01}
		if rng.IntN(4) == 0 {
			c.maxSpecBytes = 170
		}
		if rng.IntN(7) == 0 {
			c.cellTimeout = ms(1500, 5000)
		}
		if rng.IntN(3) == 0 {
			c.retries, c.retryBackoff = 1+rng.IntN(2), ms(100, 1500)
		}
		if i == 0 && lanes || i > 0 && lanes && rng.IntN(2) == 0 {
			c.lanes, c.strict = []int{1 + rng.IntN(6), 1 + rng.IntN(6)}, rng.IntN(3) == 0
		}
		// Drawn apart, so that the rest of a seed's plan stays as it was:
		// most agents freeze their cells; some stop them; some are agents
		// without a session, in the same fleet.
		mode := s.rand(c.name, "mode")
		c.freeze, c.legacy = mode.IntN(4) != 0, mode.IntN(6) == 0
		nodes = append(nodes, c)
		fmt.Fprintf(&b, "node %s ttl=%v conc=%d max_attempts=%d max_spec_bytes=%d poll=%v cell_timeout=%v rate=%.4f retries=%d backoff=%v lanes=%v strict=%v freeze=%v legacy=%v\n",
			c.name, c.ttl, c.concurrency, c.maxAttempts, c.maxSpecBytes, c.poll, c.cellTimeout, c.rate, c.retries, c.retryBackoff, c.lanes, c.strict, c.freeze, c.legacy)
	}
	if rng.IntN(4) != 0 {
		faults = Faults{PreError: rng.Float64() * 0.05, SlowDown: rng.Float64() * 0.03, LostAnswer: rng.Float64() * 0.05,
			PostError: rng.Float64() * 0.03, Held: rng.Float64() * 0.04}
	}
	faults.MaxLatency = ms(5, 40)
	fmt.Fprintf(&b, "faults %+v\n", faults)

	n := 0
	var specs []*specDef
	for i := range 1 + rng.IntN(4) {
		d := &specDef{id: fmt.Sprintf("s%d", i+1), ms: 200 + rng.IntN(2500), pads: map[int]int{}}
		if rng.IntN(3) == 0 {
			d.exit = 1 // retried by agents and specs with retries
		}
		if rng.IntN(25) == 0 {
			d.panic = 1
		}
		specs = append(specs, d)
	}
	interrupt := func() time.Duration {
		if rng.IntN(3) == 0 {
			return ms(1, 1500)
		}
		return 0
	}
	submit := func(at time.Duration, d *specDef, replace bool) {
		if !replace && d.lastN > 0 && rng.IntN(3) != 0 {
			// the same bytes again
		} else {
			n++
			d.lastN = n
		}
		sn, body, cut := d.lastN, d.body(d.lastN, rng.IntN(60)), interrupt()
		kind := "submit"
		if replace {
			kind = "replace"
		}
		opt := admin.SubmitOptions{Replace: replace, Retries: -1}
		if rng.IntN(4) == 0 {
			opt.Retries = rng.IntN(3) // fleetd submit --retries
		}
		var in time.Duration // fleetd submit --in
		if !replace && rng.IntN(4) == 0 {
			in = ms(0, 3000)
		}
		byHand := in > 0 && rng.IntN(3) == 0 // as aws s3 cp would write it
		events = append(events, event{at: at, what: fmt.Sprintf("%s %s n=%d (%d bytes) retries=%d in=%v by_hand=%v interrupt=%v", kind, d.id, sn, len(body), opt.Retries, in, byHand, cut), do: func() {
			s.tool("submit", d.id, sn, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
				if in > 0 {
					opt.NotBefore = time.Now().Add(in)
				}
				if byHand {
					_, err := rec.h.Put(ctx, s.layout.DelayedKey(d.id, opt.NotBefore), body, store.PutOptions{})
					return err
				}
				_, err := a.SubmitWith(ctx, []admin.SpecFile{{Name: d.id + ".json", Body: body}}, d.id, opt)
				return err
			})
		}})
	}
	for _, d := range specs {
		submit(ms(0, 2000), d, false)
	}
	if lanes {
		// Specs of lane x, run only by the nodes that serve it, beside the
		// scenario's own on the same workers.
		for i := range 1 + rng.IntN(4) {
			n++
			id, sn, at := fmt.Sprintf("x%d", i+1), n, ms(0, 4000)
			d := &specDef{id: id, ms: 200 + rng.IntN(1500), pads: map[int]int{}}
			if rng.IntN(4) == 0 {
				d.exit = 1
			}
			body := d.body(sn, 0)
			events = append(events, event{at: at, what: fmt.Sprintf("submit %s n=%d to lane x", id, sn), do: func() {
				s.toolOn(s.hist.lanes[1], "submit", id, sn, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					_, err := a.Submit(ctx, []admin.SpecFile{{Name: id + ".json", Body: body}}, id, false)
					return err
				})
			}})
		}
	}
	end = time.Duration(10+rng.IntN(12)) * time.Second
	if rng.IntN(3) == 0 {
		// A periodic spec (fleetd schedule add), removed when the faults
		// end so that the fleet can settle.
		at, every, cut := ms(0, 3000), 1+rng.IntN(3), interrupt()
		body := fmt.Appendf(nil, `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"tick","n":%d,"ms":%d,"exit":0}}`, scheduleN, 100+rng.IntN(900))
		events = append(events, event{at: at, what: fmt.Sprintf("schedule add tick @every %ds interrupt=%v", every, cut), do: func() {
			s.tool("schedule", "tick", -1, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
				_, err := a.AddSchedule(ctx, "fleet", "", "tick", fmt.Sprintf("@every %ds", every), admin.SpecFile{Name: "tick.json", Body: body})
				return err
			})
		}})
		s.scheduled = true
	}
	for range 2 + rng.IntN(7) {
		at := ms(500, int(end/time.Millisecond))
		d := specs[rng.IntN(len(specs))]
		switch k := rng.IntN(18); {
		case k < 3:
			submit(at, d, false)
		case k < 4:
			submit(at, d, true)
		case k < 5:
			n++
			id, body, sn := fmt.Sprintf("bad%d", n), fmt.Appendf(nil, `{"n":%d, not json`, n), n
			events = append(events, event{at: at, what: "raw PUT of a bad spec " + id, do: func() {
				s.tool("submit", id, sn, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					// As `aws s3 cp` would: how a spec that is not JSON gets there.
					_, err := rec.h.Put(ctx, s.layout.Key(store.Pending, id), body, store.PutOptions{})
					return err
				})
			}})
		case k < 8:
			cut := interrupt()
			events = append(events, event{at: at, what: fmt.Sprintf("cancel %s interrupt=%v", d.id, cut), do: func() {
				s.tool("cancel", d.id, -1, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					res, err := a.Cancel(ctx, d.id, "sim")
					if err == nil {
						rec.result = "node " + res.Node
						if res.Filed {
							rec.result = "filed"
						}
					}
					return err
				})
			}})
		case k < 10:
			cut := interrupt()
			events = append(events, event{at: at, what: fmt.Sprintf("requeue %s interrupt=%v", d.id, cut), do: func() {
				s.tool("requeue", d.id, -1, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					_, err := a.Requeue(ctx, []string{d.id}, false, 0)
					return err
				})
			}})
		case k < 12:
			older, cut := ms(0, 3000), interrupt()
			events = append(events, event{at: at, what: fmt.Sprintf("prune older than %v interrupt=%v", older, cut), do: func() {
				s.tool("prune", "", -1, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					res, err := a.Prune(ctx, []store.Area{store.Completed, store.Failed}, older, false)
					rec.result = fmt.Sprint(res)
					return err
				})
			}})
		case k < 13:
			dur := ms(1000, 5000)
			events = append(events, event{at: at, what: fmt.Sprintf("pause for %v", dur), do: func() {
				s.tool("pause", "", -1, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					_, err := a.Pause(ctx, "fleet", false, "sim")
					return err
				})
			}}, event{at: at + dur, what: "resume", do: func() {
				s.tool("resume", "", -1, 0, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
					_, err := a.Resume(ctx, "fleet", false)
					return err
				})
			}})
		case k < 15:
			c := nodes[rng.IntN(len(nodes))]
			back := ms(1000, 8000)
			events = append(events, event{at: at, what: fmt.Sprintf("crash %s, back after %v", c.name, back), do: func() {
				if inc := s.down(c.name); inc != nil {
					inc.crash()
					time.AfterFunc(back, func() { s.restartIfDown(c) })
				}
			}})
		case k < 16:
			c := nodes[rng.IntN(len(nodes))]
			deadline, back := ms(0, 3000), ms(500, 5000)
			events = append(events, event{at: at, what: fmt.Sprintf("SIGTERM %s, drain deadline %v, back after %v", c.name, deadline, back), do: func() {
				if inc := s.down(c.name); inc != nil {
					s.tools.Go(func() {
						inc.stop(deadline)
						time.Sleep(back)
						s.restartIfDown(c)
					})
				}
			}})
		default:
			c := nodes[rng.IntN(len(nodes))]
			dur := ms(1000, 9000)
			events = append(events, event{at: at, what: fmt.Sprintf("cut %s off the network for %v", c.name, dur), do: func() {
				s.hist.tracef(c.name, "NETWORK CUT for %v", dur)
				s.bus.cutOff(c.name, time.Now().Add(dur))
			}})
		}
	}
	if out := s.rand("plan", "outage"); out.IntN(4) == 0 {
		// The store unreachable from every agent at once, for up to a few
		// ttls: nothing may run twice, and what was running goes on.
		at, dur := time.Duration(out.IntN(int(end/time.Millisecond)))*time.Millisecond, time.Duration(1000+out.IntN(14000))*time.Millisecond
		events = append(events, event{at: at, what: fmt.Sprintf("outage: every agent cut off for %v", dur), do: func() {
			for _, c := range nodes {
				s.hist.tracef(c.name, "NETWORK CUT for %v (outage)", dur)
				s.bus.cutOff(c.name, time.Now().Add(dur))
			}
		}})
	}
	sortEvents(events)
	for _, e := range events {
		fmt.Fprintf(&b, "at %7.3fs %s\n", e.at.Seconds(), e.what)
	}
	fmt.Fprintf(&b, "faults end at %v\n---\n", end)
	return nodes, events, faults, end, b.String()
}

// scheduleN is the "n" of the schedule's spec: every due time's spec has
// the same bytes under an id of its own.
const scheduleN = 1 << 20

func sortEvents(es []event) {
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].at < es[j-1].at; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

func (s *scenario) restartIfDown(c nodeCfg) {
	s.mu.Lock()
	_, up := s.live[c.name]
	ended := s.ended
	s.mu.Unlock()
	if !up && !ended {
		s.restart(c)
	}
}
