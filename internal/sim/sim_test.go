package sim

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// summary is what a sweep found.
type summary struct {
	scenarios int
	elapsed   time.Duration
	steps     int
	virtual   time.Duration
	failed    []*Result         // in seed order
	first     map[string]uint64 // class → the first seed (lowest) that found it
	seeds     map[string][]uint64
	count     map[string]int // class → scenarios that found it
}

// sweep runs the scenarios of seeds from..from+n-1, spread over the machine's
// cores, each in a bubble of its own.
func sweep(t *testing.T, from uint64, n int, opt Options) *summary {
	t.Helper()
	workers := runtime.GOMAXPROCS(0)
	sum := &summary{first: map[string]uint64{}, count: map[string]int{}, seeds: map[string][]uint64{}}
	var mu sync.Mutex
	start := time.Now()
	t.Run("sweep", func(t *testing.T) {
		for w := range workers {
			t.Run(strconv.Itoa(w), func(t *testing.T) {
				t.Parallel()
				for i := w; i < n; i += workers {
					seed := from + uint64(i)
					var r *Result
					synctest.Test(t, func(t *testing.T) { r = Run(seed, opt) })
					mu.Lock()
					sum.scenarios++
					sum.steps += r.Steps
					sum.virtual += r.Virtual
					if len(r.Violations) > 0 {
						sum.failed = append(sum.failed, r)
						for _, c := range r.Classes() {
							sum.count[c]++
							sum.seeds[c] = append(sum.seeds[c], seed)
							if s, ok := sum.first[c]; !ok || seed < s {
								sum.first[c] = seed
							}
						}
					}
					mu.Unlock()
				}
			})
		}
	})
	sum.elapsed = time.Since(start)
	slices.SortFunc(sum.failed, func(a, b *Result) int { return int(a.Seed) - int(b.Seed) })
	return sum
}

func (s *summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d scenarios in %v: %.0f scenarios/s, %.0f bus steps and %.0fs virtual per scenario; %d with violations\n",
		s.scenarios, s.elapsed.Round(time.Millisecond), float64(s.scenarios)/s.elapsed.Seconds(),
		float64(s.steps)/float64(max(1, s.scenarios)), s.virtual.Seconds()/float64(max(1, s.scenarios)), len(s.failed))
	var classes []string
	for c := range s.count {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	for _, c := range classes {
		seeds := slices.Sorted(slices.Values(s.seeds[c]))
		fmt.Fprintf(&b, "  %-18s %6d scenarios, first at seed %d; seeds %v\n", c, s.count[c], s.first[c], seeds[:min(8, len(seeds))])
	}
	return b.String()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// TestSweep runs SIM_SEEDS scenarios (a short sweep by default; make sim runs
// a long one) from SIM_SEED_BASE and fails on any violation, printing the
// trace of the first few. SIM_SEED=n runs that one seed and prints its trace.
// SIM_STORE=conditional|versioned runs every scenario on that kind of store
// (by default every third is versioned).
func TestSweep(t *testing.T) {
	opt := Options{Store: store.DeleteMode(os.Getenv("SIM_STORE"))}
	if v := os.Getenv("SIM_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SIM_SEED=%q: %v", v, err)
		}
		// The lister's and the rescuer's jitter come from math/rand/v2, which
		// the simulator cannot seed: a replay may take another path. Try
		// until the seed fails again (SIM_TRIES), and show that run.
		var r *Result
		tries := envInt("SIM_TRIES", 30)
		for try := 1; try <= tries; try++ {
			synctest.Test(t, func(t *testing.T) { r = Run(seed, opt) })
			if len(r.Violations) > 0 {
				t.Logf("seed %d failed on try %d of %d", seed, try, tries)
				break
			}
		}
		t.Logf("seed %d: %d steps, %v virtual\n%s", seed, r.Steps, r.Virtual, r.Trace())
		for _, v := range r.Violations {
			t.Errorf("%s", v)
		}
		return
	}
	def := 3000
	if raceOn {
		def = 1000
	}
	n := envInt("SIM_SEEDS", def)
	if testing.Short() {
		n = min(n, 200)
	}
	sum := sweep(t, uint64(envInt("SIM_SEED_BASE", 1)), n, opt)
	t.Logf("%s", sum)
	for i, r := range sum.failed {
		if i == envInt("SIM_TRACES", 1) {
			break
		}
		t.Logf("trace of seed %d (replay: SIM_SEED=%d go test -run 'TestSweep$' ./internal/sim/):\n%s", r.Seed, r.Seed, r.Trace())
	}
	for _, r := range sum.failed {
		t.Errorf("seed %d: %s", r.Seed, strings.Join(r.Violations, "; "))
	}
}

// TestMutationRates is a tool, not a test: SIM_MUTATION_RATES=N runs N seeds
// under each mutation and prints what each finds.
func TestMutationRates(t *testing.T) {
	n := envInt("SIM_MUTATION_RATES", 0)
	if n == 0 {
		t.Skip("set SIM_MUTATION_RATES=N")
	}
	for name, m := range map[string]Mutations{"none": {}, "strip-delete-if-match": {StripDeleteIfMatch: true},
		"unknown-as-not-landed": {UnknownAsNotLanded: true}, "skip-confirm": {SkipConfirm: true}} {
		sum := sweep(t, 1, n, Options{Mutations: m})
		t.Logf("%s: %s", name, sum)
		for _, r := range sum.failed {
			for _, v := range r.Violations {
				if strings.HasPrefix(v, "cancel-ignored") || strings.HasPrefix(v, "ran-twice") {
					t.Logf("  %s seed %d: %s", name, r.Seed, v)
				}
			}
		}
	}
}

// TestMutationsAreFound breaks one rule at a time in the store layer and
// requires the simulator to find it: a class of violation it raises well above
// what the same seeds find with the rules intact (zero since the fixes of
// issue 18). "Unknown read as not landed" is run and reported, not required:
// the protocol reads back every write whose outcome it could not learn and
// every 412, so a node that takes "unknown" for "no" only gives up a lease
// that then goes stale — which the protocol already survives (see the
// closing note of issue 18).
func TestMutationsAreFound(t *testing.T) {
	def := 1500
	if raceOn {
		def = 700
	}
	n := envInt("SIM_MUTATION_SEEDS", def)
	if testing.Short() {
		t.Skip("a sweep of the fleet four times")
	}
	base := sweep(t, 1, n, Options{})
	for _, c := range []struct {
		name     string
		m        Mutations
		class    string
		required bool
	}{
		{"DELETE without If-Match", Mutations{StripDeleteIfMatch: true}, "blind-delete", true},
		{"claim's confirm skipped", Mutations{SkipConfirm: true}, "ran-twice", true},
		{"unknown read as not landed", Mutations{UnknownAsNotLanded: true}, "", false},
	} {
		got := sweep(t, 1, n, Options{Mutations: c.m})
		t.Logf("%s: %d scenarios with %s (intact code: %d)\n%s", c.name, got.count[c.class], c.class, base.count[c.class], got)
		if c.required && got.count[c.class] <= base.count[c.class]*3/2+2 {
			t.Errorf("%s: %d scenarios with %s, intact code %d: the mutation is not found", c.name, got.count[c.class], c.class, base.count[c.class])
		}
	}
}
