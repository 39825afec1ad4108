package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/pipeline"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/recovery"
	"github.com/cellos/fleetd/internal/schedule"
	"github.com/cellos/fleetd/internal/store"
)

// nodeCfg is one agent's settings; agents of a fleet differ.
type nodeCfg struct {
	name         string
	ttl          time.Duration
	concurrency  int
	maxAttempts  int
	maxSpecBytes int64
	poll         time.Duration
	cellTimeout  time.Duration
	rate         float64 // its clock's rate against the true one (skew)
	// freeze: cells are frozen while the session lapses (else stopped);
	// legacy: no session, every lease renews itself (an older agent).
	freeze, legacy bool
	retries        int // CELLOS_FLEET_RETRIES
	retryBackoff   time.Duration
	// lanes, if set, are the weights of the scenario's lane and lane x
	// (CELLOS_FLEET_LANES); strict: CELLOS_FLEET_LANE_ORDER=strict.
	lanes  []int
	strict bool
}

// incarnation is one run of an agent process: the real pipeline, protocol,
// recovery and drain on a store handle of its own.
type incarnation struct {
	s       *scenario
	cfg     nodeCfg
	name    string
	h       *Handle
	d       *drain.Drainer
	kill    context.CancelFunc
	done    chan struct{}
	crashed atomic.Bool
}

func (s *scenario) startNode(cfg nodeCfg, gen int) *incarnation {
	name := cfg.name
	if gen > 1 {
		name = cfg.name + "#" + string(rune('0'+gen))
	}
	inc := &incarnation{s: s, cfg: cfg, name: name, done: make(chan struct{})}
	inc.h = newHandle(s.bus, name, cfg.name, "node", s.policy, s.seed, s.opt)
	log := slog.New(&logHandler{h: s.hist, who: name})
	proto := protocol.New(protocol.Config{Layout: s.layout, Node: cfg.name, TTL: cfg.ttl, MaxAttempts: cfg.maxAttempts,
		Logger: log, Clock: newSkewClock(cfg.rate)}, inc.h)
	root, kill := context.WithCancel(context.Background())
	inc.kill = kill
	inc.d = drain.New(root, 2*s.policy.Timeout)
	pcfg := pipeline.Config{Node: cfg.name, Layout: s.layout, Concurrency: cfg.concurrency, PollInterval: cfg.poll,
		MaxSpecBytes: cfg.maxSpecBytes, MaxAttempts: cfg.maxAttempts, CellTimeout: cfg.cellTimeout, Freeze: cfg.freeze, Logger: log,
		Rand: s.rand(name, "lister"), Retries: cfg.retries, RetryBackoff: cfg.retryBackoff, Jitter: lockedJitter(s.rand(name, "retry"))}
	var p interface{ Run() }
	protos := []*protocol.Protocol{proto}
	rescuers := []*recovery.Rescuer{recovery.New(proto, inc.d, cfg.ttl, log, s.rand(name, "rescuer"))}
	if cfg.lanes == nil {
		p = pipeline.New(pcfg, inc.h, proto, &runner{inc: inc}, inc.d)
	} else {
		// CELLOS_FLEET_LANES: the scenario's lane and lane x on one pool
		// of workers, each lane its own protocol and recovery.
		protoX := protocol.New(protocol.Config{Layout: s.hist.lanes[1], Node: cfg.name, TTL: cfg.ttl, MaxAttempts: cfg.maxAttempts,
			Logger: log, Clock: newSkewClock(cfg.rate)}, inc.h)
		protos = append(protos, protoX)
		rescuers = append(rescuers, recovery.New(protoX, inc.d, cfg.ttl, log, s.rand(name, "rescuer-x")))
		own, x := pcfg, pcfg
		own.MultiLane = true
		x.Layout, x.Lane, x.MultiLane, x.Rand = s.hist.lanes[1], laneX, true, s.rand(name, "lister-x")
		x.Jitter = lockedJitter(s.rand(name, "retry-x"))
		p = pipeline.NewLanes([]*pipeline.Pipeline{
			pipeline.New(own, inc.h, proto, &runner{inc: inc}, inc.d),
			pipeline.New(x, inc.h, protoX, &runner{inc: inc}, inc.d),
		}, cfg.lanes, cfg.strict, cfg.concurrency, inc.d)
	}
	scheduler := schedule.New(schedule.Config{Prefix: "fleet", Interval: cfg.poll, IdleInterval: cfg.poll, MaxSpecBytes: 1 << 20, Logger: log},
		inc.h, oneLane{proto})
	s.hist.tracef(name, "START ttl=%v conc=%d max_attempts=%d max_spec_bytes=%d poll=%v cell_timeout=%v clock_rate=%.4f retries=%d backoff=%v lanes=%v strict=%v freeze=%v legacy=%v",
		cfg.ttl, cfg.concurrency, cfg.maxAttempts, cfg.maxSpecBytes, cfg.poll, cfg.cellTimeout, cfg.rate, cfg.retries, cfg.retryBackoff, cfg.lanes, cfg.strict, cfg.freeze, cfg.legacy)
	go func() {
		defer close(inc.done)
		if !cfg.legacy {
			// As the agent does at start-up: no work before the sessions,
			// one per lane.
			for _, pr := range protos {
				sess, ok := inc.startSession(pr)
				if !ok {
					return
				}
				defer sess.Close(inc.d.Abort())
			}
		}
		rescued, scheduled := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(rescued)
			var rs sync.WaitGroup
			for _, r := range rescuers {
				rs.Go(func() { r.Run(inc.d.Intake()) })
			}
			rs.Wait()
		}()
		go func() {
			defer close(scheduled)
			scheduler.Run(inc.d.Intake())
		}()
		p.Run()
		<-rescued
		<-scheduled
	}()
	return inc
}

// startSession starts pr's session, retrying until it lands or the process
// is told to stop (false).
func (inc *incarnation) startSession(pr *protocol.Protocol) (*protocol.Session, bool) {
	for try := 0; ; try++ {
		if sess, err := pr.StartSession(inc.d.Intake()); err == nil {
			return sess, true
		}
		select {
		case <-inc.d.Intake().Done():
			return nil, false
		case <-time.After(time.Duration(100<<min(try, 4)) * time.Millisecond):
		}
	}
}

// crash ends the process at once: no request of its is sent from now on, its
// cells die with it, its goroutines unwind. Requests already on their way may
// still land.
func (inc *incarnation) crash() {
	if inc.crashed.Swap(true) {
		return
	}
	inc.h.dead.Store(true)
	inc.s.hist.mu.Lock()
	inc.s.hist.crashed[inc.name] = time.Now()
	inc.s.hist.mu.Unlock()
	inc.s.hist.tracef(inc.name, "CRASH")
	inc.kill()
}

// stop is SIGTERM: the drain, bounded by deadline; then the process exits.
func (inc *incarnation) stop(deadline time.Duration) {
	inc.s.hist.tracef(inc.name, "SIGTERM: drain, deadline %v", deadline)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	inc.d.Drain(ctx)
	<-inc.done
	inc.h.dead.Store(true) // the process exits
	inc.s.hist.tracef(inc.name, "EXIT after drain")
}

// runner is the supervisor: a cell sleeps for the time its spec asks, exits
// with the code it asks (or panics, if it asks), and stops when its context
// ends. It records each run for the checker.
type runner struct{ inc *incarnation }

type cellSpec struct {
	Spec struct {
		N     int `json:"n"`
		MS    int `json:"ms"`
		Exit  int `json:"exit"`
		Panic int `json:"panic"`
	} `json:"spec"`
}

func (r *runner) Run(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result {
	inc := r.inc
	body, err := os.ReadFile(specPath)
	if err != nil {
		return exec.Result{ExitCode: -1, StartErr: err}
	}
	var spec cellSpec
	_ = json.Unmarshal(body, &spec)
	rec := &runRec{node: inc.cfg.name, inc: inc.name, id: specID, n: spec.Spec.N, start: time.Now(),
		version: inc.h.pendingVersion(inc.s.layout.Key(store.Pending, specID))}
	inc.s.hist.startRun(rec)
	cell := &simCell{h: inc.s.hist, rec: rec, poke: make(chan struct{}, 1)}
	if started != nil {
		started(cell)
	}
	if spec.Spec.Panic != 0 {
		inc.s.hist.endRun(rec, "panic", -1)
		panic("simulated supervisor panic")
	}
	// The cell's work is its time running: none passes while it is frozen.
	left := time.Duration(spec.Spec.MS) * time.Millisecond
	for {
		frozen, killed := cell.state()
		if killed {
			inc.s.hist.endRun(rec, "killed", -1)
			return exec.Result{ExitCode: -1, Signal: "SIGKILL", Duration: time.Since(rec.start)}
		}
		var tick <-chan time.Time
		began := time.Now()
		t := time.NewTimer(left)
		if !frozen {
			tick = t.C
		}
		select {
		case <-tick:
			inc.s.hist.endRun(rec, "exit", spec.Spec.Exit)
			return exec.Result{ExitCode: spec.Spec.Exit, Duration: time.Since(rec.start)}
		case <-cell.poke:
			t.Stop()
			if !frozen {
				left -= time.Since(began)
			}
		case <-ctx.Done():
			t.Stop()
			how := "stopped"
			if inc.crashed.Load() {
				how = "crash"
			}
			inc.s.hist.endRun(rec, how, -1)
			return exec.Result{ExitCode: -1, Signal: "SIGTERM", Stopped: true, Duration: time.Since(rec.start)}
		}
	}
}

// simCell is a running cell as fleetd controls it: frozen and thawed in
// virtual time, its frozen spans recorded for the checker.
type simCell struct {
	h    *history
	rec  *runRec
	mu   sync.Mutex
	ice  bool
	dead bool
	poke chan struct{}
}

func (c *simCell) state() (frozen, killed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ice, c.dead
}

func (c *simCell) set(frozen, killed bool) error {
	c.mu.Lock()
	if c.ice != frozen {
		c.h.frozen(c.rec, frozen)
	}
	c.ice, c.dead = frozen, c.dead || killed
	c.mu.Unlock()
	select {
	case c.poke <- struct{}{}:
	default:
	}
	return nil
}

func (c *simCell) Freeze() error { return c.set(true, false) }

func (c *simCell) Thaw() error { return c.set(false, false) }

func (c *simCell) Kill() error {
	c.mu.Lock()
	frozen := c.ice
	c.mu.Unlock()
	return c.set(frozen, true)
}

// skewClock runs at rate times the true clock: a node's clock that drifts.
type skewClock struct {
	t0   time.Time
	rate float64
}

func newSkewClock(rate float64) skewClock { return skewClock{t0: time.Now(), rate: rate} }

func (c skewClock) Now() time.Time {
	return c.t0.Add(time.Duration(float64(time.Since(c.t0)) * c.rate))
}

func (c skewClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	return time.AfterFunc(time.Duration(float64(d)/c.rate), f)
}

// lockedJitter draws a retry's jitter from r for every worker of a node.
func lockedJitter(r *rand.Rand) func(n int64) int64 {
	var mu sync.Mutex
	return func(n int64) int64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Int64N(n)
	}
}

// rand returns a source for one goroutine of process name, drawn from the
// scenario's seed and what it is for, so that a seed replays.
func (s *scenario) rand(name, what string) *rand.Rand {
	f := fnv.New64a()
	fmt.Fprintf(f, "%d/%s/%s", s.seed, name, what)
	return rand.New(rand.NewPCG(s.seed, f.Sum64()))
}

// oneLane submits every schedule's due times on the scenario's one lane.
type oneLane struct{ p *protocol.Protocol }

func (o oneLane) SubmitDue(ctx context.Context, quit <-chan struct{}, _ string, d protocol.Due) (bool, error) {
	return o.p.SubmitDue(ctx, quit, d)
}
