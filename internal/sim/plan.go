package sim

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/queue"
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
		// Drawn apart, so that the rest of a seed's plan stays as it was:
		// most agents freeze their cells; some stop them; some are older
		// agents without a session, in the same fleet.
		mode := s.rand(c.name, "mode")
		c.freeze, c.legacy = mode.IntN(4) != 0, mode.IntN(6) == 0
		nodes = append(nodes, c)
		fmt.Fprintf(&b, "node %s ttl=%v conc=%d max_attempts=%d max_spec_bytes=%d poll=%v cell_timeout=%v rate=%.4f freeze=%v legacy=%v\n",
			c.name, c.ttl, c.concurrency, c.maxAttempts, c.maxSpecBytes, c.poll, c.cellTimeout, c.rate, c.freeze, c.legacy)
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
		if rng.IntN(5) == 0 {
			d.exit = 1
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
		events = append(events, event{at: at, what: fmt.Sprintf("%s %s n=%d (%d bytes) interrupt=%v", kind, d.id, sn, len(body), cut), do: func() {
			s.tool("submit", d.id, sn, cut, func(ctx context.Context, a *admin.Admin, rec *actionRec) error {
				_, err := a.Submit(ctx, []admin.SpecFile{{Name: d.id + ".json", Body: body}}, d.id, replace)
				return err
			})
		}})
	}
	for _, d := range specs {
		submit(ms(0, 2000), d, false)
	}
	end = time.Duration(10+rng.IntN(12)) * time.Second
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
					_, err := rec.h.Put(ctx, s.layout.Key(queue.Pending, id), body, queue.PutOptions{})
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
					res, err := a.Prune(ctx, []queue.State{queue.Completed, queue.Failed}, older, false)
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
