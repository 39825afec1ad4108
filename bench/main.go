// Command bench measures fleetd end to end — the real fleetd binary, a real
// versitygw on loopback behind a request-counting proxy, a real supervisor
// process per spec — and writes a Markdown report and a chart.
//
// It is a module of its own (its chart library is no dependency of the
// daemon); run it from bench/ (or `make bench` from the root):
//
//	go run .                            # every scenario, default sizes (~20 min)
//	go run . -scenarios throughput,baseline
//	go run . -smoke                     # tiny sizes, to keep the harness working
//	go run . -scenarios latency -compare /tmp/fleetd-old   # before/after a change
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/localstore"
	"github.com/cellos/fleetd/internal/store"
)

// allScenarios in report order.
var allScenarios = []string{"throughput", "scaling", "pickup", "idle", "backlog", "fleet", "baseline", "deadnode", "recovery", "latency", "stores", "notify", "output", "busy"}

type options struct {
	scenarios         map[string]bool
	specs             int
	concurrencies     []int
	scaleN            []int
	scaleTrials       int
	pickups           int
	idle              time.Duration
	backlogs          []int
	backlogRun        time.Duration
	agents            []int
	fleetSpecs        int
	baselineSpecs     int
	deadTTL           time.Duration
	deadTrials        int
	recAgents         []int
	recTTL            time.Duration
	recWindow         time.Duration
	latencyConc       []int
	latencyDelay      time.Duration
	notifyPollPickups int           // pickups polling at 5 s, for scenario 15
	notifyPickups     int           // pickups with notifications, and after NATS returns
	lostPickups       int           // pickups with events lost (NATS down, never sent)
	notifyAgents      int           // agents of scenario 15's fleet rows
	netPoll           time.Duration // scenario 15's safety-net poll
	notifyParts       map[string]bool
	storeConc         []int // the stores scenario's concurrencies, on each store
	busyCells         []int // scenario 17: cells running on the one agent
	busyWarm          time.Duration
	busyWindow        time.Duration
	compare           string // a second fleetd binary for the latency scenario's before/after
	out               string
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run: "+strings.Join(allScenarios, ", "))
	smoke := fs.Bool("smoke", false, "tiny sizes: checks the harness, measures nothing")
	out := fs.String("out", "results", "directory for the report and chart")
	bin := fs.String("fleetd", "", "measure this fleetd binary instead of building ./cmd/fleetd (e.g. an older release, to compare in one session)")
	conc := fs.String("concurrency", "", "comma-separated concurrencies of the throughput scenario (default 1,4,16,64)")
	parts := fs.String("notify-parts", "pickup,idle,fleet", "parts of the notify scenario to run: pickup (with the lost-notification rows), idle, fleet")
	compare := fs.String("compare", "", "also run the latency scenario with this fleetd binary (e.g. the build before a protocol change): before/after in one run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o := options{
		specs: 500, concurrencies: []int{1, 4, 16, 64}, scaleN: []int{1, 8, 32, 64}, scaleTrials: 3,
		// Idle runs 6 minutes: recovery costs its agent a few requests about
		// once a ttl (60 s), claimed/ is listed once in three ttls, and the
		// first offer reads the marker; a shorter window over-weights where
		// it starts.
		pickups: 50, idle: 6 * time.Minute, backlogs: []int{2000, 20000}, backlogRun: 5 * time.Second,
		agents: []int{1, 2, 4, 8, 16}, fleetSpecs: 1000, baselineSpecs: 30,
		deadTTL: 10 * time.Second, deadTrials: 3,
		recAgents: []int{1, 4, 16}, recTTL: 6 * time.Second, recWindow: time.Minute,
		latencyConc: []int{16, 64}, latencyDelay: 20 * time.Millisecond,
		notifyPollPickups: 20, notifyPickups: 50, lostPickups: 5, notifyAgents: 16, netPoll: time.Minute,
		storeConc: []int{1, 16},
		busyCells: []int{16, 64}, busyWarm: 150 * time.Second, busyWindow: 2 * time.Minute,
		out: *out,
	}
	if *smoke {
		o = options{
			specs: 20, concurrencies: []int{1, 4}, scaleN: []int{1, 4}, scaleTrials: 1,
			pickups: 2, idle: 2 * time.Second, backlogs: []int{20, 40}, backlogRun: 200 * time.Millisecond,
			agents: []int{1, 2}, fleetSpecs: 20, baselineSpecs: 2,
			deadTTL: 3 * time.Second, deadTrials: 1,
			recAgents: []int{1, 2}, recTTL: 3 * time.Second, recWindow: 2 * time.Second,
			latencyConc: []int{2}, latencyDelay: 20 * time.Millisecond,
			notifyPollPickups: 1, notifyPickups: 2, lostPickups: 1, notifyAgents: 2, netPoll: 2 * time.Second,
			storeConc: []int{1},
			busyCells: []int{2}, busyWarm: time.Second, busyWindow: 2 * time.Second,
			out: *out,
		}
	}
	if *conc != "" {
		o.concurrencies = nil
		for _, f := range strings.Split(*conc, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return fmt.Errorf("-concurrency: bad value %q", f)
			}
			o.concurrencies = append(o.concurrencies, n)
		}
	}
	o.compare = *compare
	o.notifyParts = map[string]bool{}
	for _, p := range strings.Split(*parts, ",") {
		o.notifyParts[strings.TrimSpace(p)] = true
	}
	o.scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(allScenarios, s) {
			return fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(allScenarios, ", "))
		}
		o.scenarios[s] = true
	}

	dir, err := os.MkdirTemp("", "fleetd-bench-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r, err := newRig(dir, *bin, localstore.Kinds[0])
	if err != nil {
		return err
	}
	defer r.close()

	rep := &report{opts: o, smoke: *smoke, started: time.Now()}
	if err := measure(r, o, rep); err != nil {
		return err
	}
	return rep.write(o.out)
}

func measure(r *rig, o options, rep *report) error {
	step := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...) }
	if o.scenarios["throughput"] {
		for _, c := range o.concurrencies {
			step("throughput: %d no-op specs at concurrency %d, then the raw limit", o.specs, c)
			row, err := r.throughput(c, o.specs)
			if err != nil {
				return fmt.Errorf("throughput c=%d: %w", c, err)
			}
			rep.throughput = append(rep.throughput, row)
		}
	}
	if o.scenarios["scaling"] {
		for _, n := range o.scaleN {
			step("scaling: %d cells of 100 ms at concurrency %d", 20*n, n)
			row, err := r.scaling(n, o.scaleTrials)
			if err != nil {
				return fmt.Errorf("scaling n=%d: %w", n, err)
			}
			rep.scaling = append(rep.scaling, row)
		}
	}
	if o.scenarios["pickup"] {
		step("pickup: %d specs at random moments, poll interval 1 s", o.pickups)
		p, err := r.pickup(o.pickups)
		if err != nil {
			return fmt.Errorf("pickup: %w", err)
		}
		rep.pickup = &p
	}
	if o.scenarios["idle"] {
		step("idle: empty queue for %v", o.idle)
		i, err := r.idle(o.idle)
		if err != nil {
			return fmt.Errorf("idle: %w", err)
		}
		rep.idle = &i
	}
	if o.scenarios["backlog"] {
		for _, n := range o.backlogs {
			step("backlog: %d pending specs", n)
			row, err := r.backlog(n, o.backlogRun)
			if err != nil {
				return fmt.Errorf("backlog %d: %w", n, err)
			}
			rep.backlog = append(rep.backlog, row)
		}
	}
	if o.scenarios["fleet"] {
		for _, k := range o.agents {
			step("fleet: %d agents x concurrency 4 on %d specs", k, o.fleetSpecs)
			row, err := r.fleet(k, o.fleetSpecs)
			if err != nil {
				return fmt.Errorf("fleet %d: %w", k, err)
			}
			if len(rep.fleet) > 0 {
				row.WastedPerSpec = max(0, row.ReqPerSpec-rep.fleet[0].ReqPerSpec)
			}
			rep.fleet = append(rep.fleet, row)
		}
	}
	if o.scenarios["deadnode"] {
		for i := range o.deadTrials {
			step("deadnode %d/%d: kill -9 the holder of a running spec among 4 agents, ttl %v", i+1, o.deadTrials, o.deadTTL)
			d, err := r.deadNode(o.deadTTL)
			if err != nil {
				return fmt.Errorf("deadnode: %w", err)
			}
			rep.dead = append(rep.dead, d)
		}
	}
	if o.scenarios["recovery"] {
		for _, k := range o.recAgents {
			step("recovery: %d idle agents, ttl %v, for %v", k, o.recTTL, o.recWindow)
			row, err := r.recoveryCost(k, o.recTTL, o.recWindow)
			if err != nil {
				return fmt.Errorf("recovery %d: %w", k, err)
			}
			rep.recovery = append(rep.recovery, row)
		}
	}
	if o.scenarios["latency"] {
		builds := [][2]string{{r.fleetd, "this build"}}
		if o.compare != "" {
			builds = append([][2]string{{o.compare, "-compare build"}}, builds...)
		}
		for _, b := range builds {
			for _, c := range o.latencyConc {
				step("latency: %s, %d no-op specs at concurrency %d, %v per request", b[1], 25*c, c, o.latencyDelay)
				row, err := r.latency(b[0], b[1], c, 25*c, o.latencyDelay)
				if err != nil {
					return fmt.Errorf("latency c=%d: %w", c, err)
				}
				rep.latency = append(rep.latency, row)
			}
		}
	}
	if o.scenarios["stores"] {
		if err := measureStores(r, o, rep, step); err != nil {
			return fmt.Errorf("stores: %w", err)
		}
	}
	if o.scenarios["notify"] {
		step("notify: notifications over NATS vs polling")
		n, err := r.notifyScenario(o)
		if err != nil {
			return fmt.Errorf("notify: %w", err)
		}
		rep.notify = &n
	}
	if o.scenarios["output"] {
		step("output: %d no-op specs with output off, then on; then idle", o.specs)
		out, err := r.outputScenario(o)
		if err != nil {
			return err
		}
		rep.output = &out
	}
	if o.scenarios["busy"] {
		for _, n := range o.busyCells {
			step("busy: one agent with %d cells running, for %v", n, o.busyWindow)
			row, err := r.busy(n, o.busyWarm, o.busyWindow)
			if err != nil {
				return err
			}
			rep.busy = append(rep.busy, row)
		}
	}
	if o.scenarios["baseline"] {
		step("baseline: %d specs the 0.5.1 way (aws CLI per call)", o.baselineSpecs)
		b, err := r.baseline(o.baselineSpecs)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		rep.baseline = &b
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// measureStores runs the throughput scenario on every store kind, one after
// the other in this run: the rig's own, then a rig of its own for each other.
func measureStores(r *rig, o options, rep *report, step func(string, ...any)) error {
	for _, kind := range localstore.Kinds {
		sr := r
		if kind != r.server.Kind {
			dir := filepath.Join(r.dir, kind)
			var err error
			if sr, err = newRig(dir, r.fleetd, kind); err != nil {
				return err
			}
			defer sr.close()
		}
		for _, c := range o.storeConc {
			step("stores: %d no-op specs at concurrency %d on %s", o.specs, c, kind)
			row, err := sr.throughput(c, o.specs)
			if err != nil {
				return fmt.Errorf("%s c=%d: %w", kind, c, err)
			}
			rep.stores = append(rep.stores, storeRow{Kind: kind, Version: sr.server.Version, Mode: sr.mode, throughput: row})
		}
	}
	return nil
}

// storeRow is one throughput row on one store.
type storeRow struct {
	Kind, Version string
	Mode          store.DeleteMode
	throughput
}
