package lister

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// fakeHints hands out the keys sent on keys and reports each answer on
// answers.
type fakeHints struct {
	keys    chan string
	answers chan hintAnswer
	mu      sync.Mutex
	up      bool
	changed chan struct{}
}

type hintAnswer struct {
	key   string
	taken bool
}

func newFakeHints() *fakeHints {
	return &fakeHints{keys: make(chan string), answers: make(chan hintAnswer, 10), changed: make(chan struct{})}
}

func (h *fakeHints) Next(ctx context.Context) (string, func(bool), error) {
	select {
	case k := <-h.keys:
		return k, func(taken bool) { h.answers <- hintAnswer{k, taken} }, nil
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
}

func (h *fakeHints) State() (bool, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up, h.changed
}

func (h *fakeHints) set(up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.up = up
	close(h.changed)
	h.changed = make(chan struct{})
}

func always(context.Context) bool { return true }

func answer(t *testing.T, h *fakeHints) hintAnswer {
	t.Helper()
	select {
	case a := <-h.answers:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the hint")
		return hintAnswer{}
	}
}

// A hint goes to an idle worker and is acknowledged; one no worker takes is
// declined, for another agent, and is not left in flight here.
func TestHintHandedOutOrDeclined(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	h := newFakeHints()
	l := New(Config{List: q.list, ID: id, Interval: time.Hour, NetInterval: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Hints: h, Idle: always})
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Item)
	done := make(chan struct{})
	go func() { l.Run(ctx, out); close(done) }()
	defer func() { cancel(); <-done }()

	h.keys <- "pending/a.json"
	it := <-out
	if it.ID != "a" {
		t.Fatalf("handed out %+v, want a", it)
	}
	if a := answer(t, h); a != (hintAnswer{"pending/a.json", true}) {
		t.Fatalf("answer %+v, want taken", a)
	}
	// Nobody receives now: the hint goes back.
	h.keys <- "pending/b.json"
	if a := answer(t, h); a != (hintAnswer{"pending/b.json", false}) {
		t.Fatalf("answer %+v, want declined", a)
	}
	// a is still in flight here (no Done): a hint of it is acknowledged and
	// not handed out twice; b is not in flight.
	h.keys <- "pending/a.json"
	if a := answer(t, h); a != (hintAnswer{"pending/a.json", true}) {
		t.Fatalf("answer %+v, want acknowledged", a)
	}
	h.keys <- "pending/b.json"
	if it := <-out; it.ID != "b" {
		t.Fatalf("handed out %+v, want b", it)
	}
	answer(t, h)
}

// The lister asks for a hint only while a worker is idle.
func TestHintsWaitForAnIdleWorker(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	h := newFakeHints()
	idle := make(chan struct{})
	l := New(Config{List: q.list, ID: id, Interval: time.Hour, NetInterval: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Hints: h, Idle: func(ctx context.Context) bool {
			select {
			case <-idle:
				return true
			case <-ctx.Done():
				return false
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Item)
	done := make(chan struct{})
	go func() { l.Run(ctx, out); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case h.keys <- "pending/a.json":
		t.Fatal("a hint was asked for with no worker idle")
	case <-time.After(200 * time.Millisecond):
	}
	idle <- struct{}{}
	h.keys <- "pending/a.json"
	if it := <-out; it.ID != "a" {
		t.Fatalf("handed out %+v, want a", it)
	}
}

// Hints coming up or going list at once; while they flow the wait between
// listings is NetInterval; a hint of a marker (the pause key) lists at once.
func TestHintsStateSetsThePoll(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	h := newFakeHints()
	waits := make(chan time.Duration, 10)
	l := New(Config{List: q.list, ID: id, Interval: time.Second, NetInterval: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Hints: h, Idle: always, After: func(d time.Duration) <-chan time.Time {
			waits <- d
			return nil // never fires: only a change or a marker lists again
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, make(chan Item)); close(done) }()
	defer func() { cancel(); <-done }()
	wait := func() time.Duration {
		t.Helper()
		select {
		case d := <-waits:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("no listing")
			return 0
		}
	}
	if d := wait(); d > 2*time.Second {
		t.Fatalf("first wait %v with hints down, want about the interval", d)
	}
	h.set(true)
	if d := wait(); d < 50*time.Minute {
		t.Fatalf("wait %v with hints up, want about NetInterval", d)
	}
	h.keys <- "pending/!paused"
	if a := answer(t, h); !a.taken {
		t.Fatal("a marker's hint was declined")
	}
	if d := wait(); d < 50*time.Minute {
		t.Fatalf("wait %v after a marker's hint, want about NetInterval", d)
	}
	h.set(false)
	if d := wait(); d > 2*time.Second {
		t.Fatalf("wait %v after hints went down, want about the interval", d)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lists != 4 {
		t.Errorf("%d listings, want 4: start, hints up, marker, hints down", q.lists)
	}
}
