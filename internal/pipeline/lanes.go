package pipeline

import (
	"cmp"
	"reflect"
	"slices"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/lister"
)

// Lanes runs the pipelines of several lanes (CELLOS_FLEET_LANES) on one pool
// of workers: each free worker goes to a lane with work, by smooth weighted
// round-robin over the lanes' weights (nginx's: deterministic, every lane
// within one pick of its share at any point), or, strict, to the heaviest
// lane with work, a lighter lane only while every heavier one is empty.
type Lanes struct {
	lanes   []*lane
	strict  bool
	workers int
	drain   *drain.Drainer
}

type lane struct {
	p      *Pipeline
	weight int
	order  int // place by weight, heaviest first (ties: as listed)
	keys   chan lister.Item
	held   *lister.Item // taken from the lister, not yet given to a worker
}

// laneItem is a key and the lane it came from.
type laneItem struct {
	l  *lane
	it lister.Item
}

// NewLanes returns the lanes of pipes (each built with MultiLane) with
// their weights, served by workers workers.
func NewLanes(pipes []*Pipeline, weights []int, strict bool, workers int, d *drain.Drainer) *Lanes {
	ls := &Lanes{strict: strict, workers: workers, drain: d}
	for i, p := range pipes {
		ls.lanes = append(ls.lanes, &lane{p: p, weight: weights[i], keys: make(chan lister.Item)})
	}
	byWeight := slices.Clone(ls.lanes)
	slices.SortStableFunc(byWeight, func(a, b *lane) int { return cmp.Compare(b.weight, a.weight) })
	for i, l := range byWeight {
		l.order = i
	}
	return ls
}

// Run works every lane until the drainer's intake closes, then waits for
// every worker (see Pipeline.Run).
func (ls *Lanes) Run() {
	intake := ls.drain.Intake()
	var listers conc.WaitGroup
	for _, l := range ls.lanes {
		listers.Go(func() { l.p.lister.Run(intake, l.keys) })
	}
	// idle holds a token per waiting worker; items is unbuffered, so a key
	// is given only to a worker that waits for it.
	idle, items := make(chan struct{}, ls.workers), make(chan laneItem)
	var workers conc.WaitGroup
	for range ls.workers {
		workers.Go(func() {
			for {
				// A waiting worker is idle for every lane: each lane's
				// lister may take a hint for it (at most one per lane
				// waits for a worker, held by the dispatcher).
				ls.idle(1)
				idle <- struct{}{}
				li, ok := <-items
				ls.idle(-1)
				if !ok {
					return
				}
				li.l.p.handle(li.it)
			}
		})
	}
	ls.dispatch(intake.Done(), idle, items)
	listers.Wait()
	close(items)
	workers.Wait()
}

// idle counts a worker waiting (d = 1) or no longer waiting (-1) for a key
// in every lane, for their listers' hints.
func (ls *Lanes) idle(d int) {
	for _, l := range ls.lanes {
		l.p.idle.add(d)
	}
}

// dispatch gives each idle worker a key of the lane the order picks, until
// done is closed.
func (ls *Lanes) dispatch(done <-chan struct{}, idle <-chan struct{}, items chan<- laneItem) {
	pick := newSmoothWRR(ls.weights())
	for {
		select {
		case <-done:
			return
		case <-idle:
		}
		for {
			ls.fill()
			if i := ls.choose(pick); i >= 0 {
				l := ls.lanes[i]
				it := *l.held
				l.held = nil
				select {
				case items <- laneItem{l, it}:
				case <-done:
					return
				}
				break
			}
			if !ls.await(done) {
				return
			}
		}
	}
}

// fill takes, without waiting, a key from each lane's lister that has one
// ready and holds none.
func (ls *Lanes) fill() {
	for _, l := range ls.lanes {
		if l.held != nil {
			continue
		}
		select {
		case it := <-l.keys:
			l.held = &it
		default:
		}
	}
}

// await waits until a lane's lister offers a key (held then), or, strict,
// a moment for a heavier lane's next listing; false once done is closed.
func (ls *Lanes) await(done <-chan struct{}) bool {
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(done)}}
	var waiting []*lane
	for _, l := range ls.lanes {
		if l.held == nil {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(l.keys)})
			waiting = append(waiting, l)
		}
	}
	if ls.strict {
		// A heavier lane that is not empty but offers nothing now (its
		// keys handed out, its next listing to come) holds a lighter one
		// back: look again shortly.
		tick := time.NewTimer(50 * time.Millisecond)
		defer tick.Stop()
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(tick.C)})
	}
	i, v, ok := reflect.Select(cases)
	switch {
	case i == 0:
		return false
	case i <= len(waiting) && ok:
		it := v.Interface().(lister.Item)
		waiting[i-1].held = &it
	}
	return true
}

// choose returns the lane to serve now, -1 if none may be.
func (ls *Lanes) choose(pick *smoothWRR) int {
	if ls.strict {
		for _, l := range ls.byOrder() {
			if l.held != nil {
				return slices.Index(ls.lanes, l)
			}
			if l.p.paused.Load() {
				continue // a paused lane holds no other back
			}
			if !l.p.listed.Load() || l.p.depth.Load() > 0 {
				return -1 // a heavier lane is not empty, or not known to be
			}
		}
		return -1
	}
	ready := make([]bool, len(ls.lanes))
	for i, l := range ls.lanes {
		ready[i] = l.held != nil
	}
	return pick.next(ready)
}

func (ls *Lanes) byOrder() []*lane {
	out := slices.Clone(ls.lanes)
	slices.SortFunc(out, func(a, b *lane) int { return cmp.Compare(a.order, b.order) })
	return out
}

func (ls *Lanes) weights() []int {
	w := make([]int, len(ls.lanes))
	for i, l := range ls.lanes {
		w[i] = l.weight
	}
	return w
}

// Cells returns the supervisors running now, in every lane.
func (ls *Lanes) Cells() int {
	n := 0
	for _, l := range ls.lanes {
		n += l.p.Cells()
	}
	return n
}

// HostBroken returns why this host cannot start the supervisor (any lane's
// finding), nil when it can.
func (ls *Lanes) HostBroken() error {
	for _, l := range ls.lanes {
		if err := l.p.HostBroken(); err != nil {
			return err
		}
	}
	return nil
}

// LastPoll returns the oldest of the lanes' last successful listings: the
// agent polls only as well as its worst lane.
func (ls *Lanes) LastPoll() time.Time {
	var oldest time.Time
	for i, l := range ls.lanes {
		t := l.p.LastPoll()
		if i == 0 || t.Before(oldest) {
			oldest = t
		}
	}
	return oldest
}

// smoothWRR is nginx's smooth weighted round-robin: each pick adds every
// ready lane's weight to its current value, takes the largest (the first on
// a tie) and subtracts the ready lanes' total from it. Over any run of picks
// with the same lanes ready, each lane's count stays within one of its
// share.
type smoothWRR struct {
	weights, current []int
}

func newSmoothWRR(weights []int) *smoothWRR {
	return &smoothWRR{weights: weights, current: make([]int, len(weights))}
}

// next picks among the ready lanes; -1 if none is.
func (w *smoothWRR) next(ready []bool) int {
	best, total := -1, 0
	for i, ok := range ready {
		if !ok {
			continue
		}
		w.current[i] += w.weights[i]
		total += w.weights[i]
		if best < 0 || w.current[i] > w.current[best] {
			best = i
		}
	}
	if best >= 0 {
		w.current[best] -= total
	}
	return best
}
