package sim

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing/synctest"
	"time"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// Faults are the rates at which the bus disturbs requests while faults are on.
// Each is the probability that one request gets it; at most one per request.
type Faults struct {
	PreError   float64 // a 5xx before the request lands: not applied
	SlowDown   float64 // 503 SlowDown: not applied
	LostAnswer float64 // applied, the answer never comes: the attempt times out
	PostError  float64 // applied, answered 500
	Held       float64 // applied only after the sender's attempt gave up
	// MaxLatency bounds each leg of a request's trip.
	MaxLatency time.Duration
}

type fault int

const (
	noFault fault = iota
	preError
	slowDown
	lostAnswer
	postError
	held
	partitioned // the sender's node is cut off: held until the cut ends, or dropped
	dropped
)

var faultNames = [...]string{"", "5xx-not-landed", "slowdown", "answer-lost", "landed-then-500", "held", "partitioned", "dropped"}

// request is one attempt of a store call on its way through the bus.
type request struct {
	h    *Handle
	op   string // GET HEAD PUT COPY DELETE LIST DIRS
	key  string
	cond string // what makes it conditional, for the trace
	// kind is cond without ETags or tokens: the canonical order must not
	// depend on values that crypto/rand chose.
	kind string
	// exec applies the request to the store; the driver alone calls it.
	exec func() reply
	out  chan reply // capacity 1: an answer nobody waits for is dropped

	arrived bool
	fault   fault
	down    time.Duration
	// expires: a write arriving later is refused unapplied, as a presigned
	// request past its X-Amz-Expires (zero: never).
	expires time.Time
}

func (r *request) String() string {
	s := r.op + " " + r.key
	if r.cond != "" {
		s += " " + r.cond
	}
	return s
}

// reply is a request's answer as the sender sees it.
type reply struct {
	status int // 200, 404, 412, 500, 503; 0 when no answer came
	// expired: refused (403) for arriving after the request's expiry.
	expired bool
	err     error
	res     any    // what the operation returns
	desc    string // for the trace
}

// bus is the single path of every store request in a scenario: a driver
// goroutine lets exactly one request move at a time, chosen by the seeded
// RNG among those waiting, sorted canonically. synctest.Wait makes "waiting"
// exact: every goroutine that can reach the bus at this instant has.
type bus struct {
	store *s3mem.Store
	hist  *history
	rng   *rand.Rand // the driver's alone
	// timeout is the senders' attempt timeout: a held request lands after it.
	timeout time.Duration

	mu     sync.Mutex
	ready  []*request
	faults Faults
	on     bool                 // faults on
	cut    map[string]time.Time // node → end of its network cut
	wake   chan struct{}
	steps  int
}

func newBus(storage *s3mem.Store, hist *history, rng *rand.Rand, timeout time.Duration) *bus {
	return &bus{store: storage, hist: hist, rng: rng, timeout: timeout, cut: map[string]time.Time{}, wake: make(chan struct{}, 1)}
}

func (b *bus) submit(r *request) {
	b.mu.Lock()
	b.ready = append(b.ready, r)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *bus) setFaults(f Faults, on bool) {
	b.mu.Lock()
	b.faults, b.on = f, on
	b.mu.Unlock()
}

// cutOff cuts node's network until until.
func (b *bus) cutOff(node string, until time.Time) {
	b.mu.Lock()
	b.cut[node] = until
	b.mu.Unlock()
}

func (b *bus) heal() {
	b.mu.Lock()
	clear(b.cut)
	b.mu.Unlock()
}

// run is the driver: until stop closes, it waits for every goroutine of the
// bubble to block, then moves one request.
func (b *bus) run(stop <-chan struct{}) {
	for {
		synctest.Wait()
		b.mu.Lock()
		n := len(b.ready)
		b.mu.Unlock()
		if n == 0 {
			select {
			case <-b.wake:
				continue
			case <-stop:
				return
			}
		}
		select {
		case <-stop:
			return
		default:
		}
		b.step()
	}
}

// step moves one waiting request: on its way out it draws its fate and
// travels; on arrival it is applied and answered.
func (b *bus) step() {
	b.mu.Lock()
	slices.SortFunc(b.ready, func(x, y *request) int {
		return cmp.Or(cmp.Compare(x.h.name, y.h.name), boolCmp(x.arrived, y.arrived), cmp.Compare(x.op, y.op),
			cmp.Compare(x.key, y.key), cmp.Compare(x.kind, y.kind))
	})
	i := b.rng.IntN(len(b.ready))
	r := b.ready[i]
	b.ready = slices.Delete(b.ready, i, i+1)
	f, on, cutUntil := b.faults, b.on, b.cut[r.h.node]
	b.steps++
	b.mu.Unlock()

	now := time.Now()
	if !r.arrived {
		r.arrived = true
		up := b.latency(f)
		r.down = b.latency(f)
		switch {
		case now.Before(cutUntil):
			r.fault = partitioned
			up = cutUntil.Sub(now) + up
			if b.rng.IntN(2) == 0 {
				r.fault = dropped
			}
		case on:
			x := b.rng.Float64()
			for _, c := range []struct {
				p float64
				f fault
			}{{f.PreError, preError}, {f.SlowDown, slowDown}, {f.LostAnswer, lostAnswer}, {f.PostError, postError}, {f.Held, held}} {
				if x < c.p {
					r.fault = c.f
					break
				}
				x -= c.p
			}
			if r.fault == held {
				up += b.timeout + time.Duration(b.rng.Int64N(int64(2*b.timeout)))
			}
		}
		if r.fault == dropped {
			b.hist.tracef(r.h.name, "-> %s  [dropped: node cut off]", r)
			return
		}
		if r.fault != noFault {
			b.hist.tracef(r.h.name, "-> %s  [%s, lands in %v]", r, faultNames[r.fault], up.Round(time.Millisecond))
		}
		time.AfterFunc(up, func() { b.submit(r) })
		return
	}

	var rep reply
	switch r.fault {
	case preError:
		rep = reply{status: 500, desc: "500 (not applied)"}
	case slowDown:
		rep = reply{status: 503, desc: "503 SlowDown (not applied)"}
	default:
		if !r.expires.IsZero() && now.After(r.expires) {
			rep = reply{status: 403, expired: true, err: store.ErrExpired, desc: "403 expired (not applied)"}
			break
		}
		rep = r.exec()
	}
	switch r.fault {
	case lostAnswer, held, partitioned:
		b.hist.tracef(r.h.name, "=> %s  landed: %s; answer lost", r, rep.desc)
		return
	case postError:
		b.hist.tracef(r.h.name, "=> %s  landed: %s; answered 500", r, rep.desc)
		rep = reply{status: 500}
	default:
		b.hist.tracef(r.h.name, "=> %s  %s", r, rep.desc)
	}
	time.AfterFunc(r.down, func() { r.out <- rep })
}

func (b *bus) latency(f Faults) time.Duration {
	maxLat := f.MaxLatency
	if maxLat <= 0 {
		maxLat = 20 * time.Millisecond
	}
	return time.Millisecond + time.Duration(b.rng.Int64N(int64(maxLat)))
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// short shows the start of an ETag, enough to tell versions apart in a trace.
func short(etag string) string {
	e := strings.Trim(etag, `"`)
	if len(e) > 6 {
		e = e[:6]
	}
	return e
}

func fmtVer(v int64) string { return fmt.Sprintf("v%d", v) }
