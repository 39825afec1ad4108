package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/lister"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

type fakeRunner struct {
	run func(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result
}

func (f *fakeRunner) Run(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result {
	return f.run(ctx, specPath, specID, started)
}

type fakeProtocol struct {
	claim  func(ctx context.Context, quit <-chan struct{}, spec protocol.Spec) (Claim, error)
	reject func(ctx context.Context, quit <-chan struct{}, spec protocol.Spec, reason string) error
}

func (f *fakeProtocol) Claim(ctx context.Context, quit <-chan struct{}, spec protocol.Spec) (Claim, error) {
	return f.claim(ctx, quit, spec)
}

func (f *fakeProtocol) Reject(ctx context.Context, quit <-chan struct{}, spec protocol.Spec, reason string) error {
	return f.reject(ctx, quit, spec, reason)
}

func (f *fakeProtocol) Promote(context.Context, <-chan struct{}, string, time.Time) (string, error) {
	return "", protocol.ErrHeld
}

// fakeClaim records how the pipeline ended it.
type fakeClaim struct {
	spec      protocol.Spec
	cancelled chan struct{}
	onWrite   func() // called first by WriteResult, if set

	mu       sync.Mutex
	lapsed   bool
	lost     bool
	changed  chan struct{}
	finished []protocol.Record
	released []bool      // countRun of each Release
	retried  []time.Time // notBefore of each Retry
	dropped  bool
}

func (c *fakeClaim) ID() string        { return c.spec.ID }
func (c *fakeClaim) Body() []byte      { return c.spec.Body }
func (c *fakeClaim) Log() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (c *fakeClaim) Hold() (valid, lost bool, changed <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lapsed && !c.lost, c.lost, c.changed
}

// set changes the claim's state as the session would.
func (c *fakeClaim) set(lapsed, lost bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lapsed, c.lost = lapsed, lost
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *fakeClaim) Retries() protocol.RetryState { return c.spec.Retry }

func (c *fakeClaim) Retry(_ context.Context, _ <-chan struct{}, reason string, notBefore time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retried = append(c.retried, notBefore)
	return nil
}

func (c *fakeClaim) Cancelled() <-chan struct{} { return c.cancelled }

func (c *fakeClaim) CancelledBy() string { return "alice@host" }

func (c *fakeClaim) WriteResult(_ context.Context, rec protocol.Record) (func(context.Context, <-chan struct{}), error) {
	if c.onWrite != nil {
		c.onWrite()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finished = append(c.finished, rec)
	return func(context.Context, <-chan struct{}) {}, nil
}

func (c *fakeClaim) Release(_ context.Context, _ <-chan struct{}, countRun bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = append(c.released, countRun)
	return nil
}

func (c *fakeClaim) Drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropped = true
}

// fakeIntake records what the workers tell the lister.
type fakeIntake struct {
	mu       sync.Mutex
	stale    []string          // keys
	rejected map[string]string // key → ETag
}

func (f *fakeIntake) Stale(it lister.Item) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stale = append(f.stale, it.Key)
}

func (f *fakeIntake) Skip(key, etag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejected[key] = etag
}

func (f *fakeIntake) Done(lister.Item) {}

// bundle holds the fakes around a pipeline under test. By default the store
// holds one valid spec, claims succeed, and the supervisor exits 0.
type bundle struct {
	store    *s3mem.Store
	proto    *fakeProtocol
	runner   *fakeRunner
	claim    *fakeClaim
	intake   *fakeIntake
	drain    *drain.Drainer
	claims   int
	rejected []string // reasons
}

const (
	key      = "fleet/pending/x.json"
	specBody = `{"kind":"ExecutionCell","spec":{"id":"x"}}`
)

var item = lister.Item{Key: key, ID: "x", ETag: s3mem.ETag([]byte(specBody))}

func setup(t *testing.T, cfg Config) (*Pipeline, *bundle) {
	t.Helper()
	b := &bundle{
		claim:  &fakeClaim{changed: make(chan struct{}), cancelled: make(chan struct{})},
		intake: &fakeIntake{rejected: map[string]string{}},
		drain:  drain.New(context.Background(), time.Second),
	}
	b.store = s3mem.New(s3mem.Quirks{})
	withBody(t, b, specBody)
	b.proto = &fakeProtocol{
		claim: func(_ context.Context, _ <-chan struct{}, spec protocol.Spec) (Claim, error) {
			b.claims++
			b.claim.spec = spec
			return b.claim, nil
		},
		reject: func(_ context.Context, _ <-chan struct{}, _ protocol.Spec, reason string) error {
			b.rejected = append(b.rejected, reason)
			return nil
		},
	}
	b.runner = &fakeRunner{run: func(_ context.Context, _, _ string, started func(exec.Cell)) exec.Result {
		started(&fakeCell{})
		return exec.Result{}
	}}
	cfg.Layout = store.NewLayout("fleet", "")
	cfg.Concurrency, cfg.PollInterval, cfg.MaxSpecBytes, cfg.MaxAttempts = 1, time.Hour, 1<<20, 3
	cfg.Logger = slog.New(slog.DiscardHandler)
	p := newPipeline(cfg, b.store, b.proto, b.runner, b.drain)
	p.intake = b.intake
	return p, b
}

// withBody makes body the pending spec at key.
func withBody(t *testing.T, b *bundle, body string) {
	t.Helper()
	if _, err := b.store.Put(context.Background(), key, []byte(body), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestGateMismatchIsRememberedNotClaimed(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{Pool: "gpu"})
	other := `{"spec":{"id":"x","placement":{"poolId":"cpu"}}}`
	withBody(t, b, other)
	p.process(item)
	if b.claims != 0 || len(b.rejected) != 0 {
		t.Errorf("%d claims, rejections %q; want a spec of another pool left alone", b.claims, b.rejected)
	}
	if got, etag := b.intake.rejected[key], s3mem.ETag([]byte(other)); got != etag {
		t.Errorf("lister told rejected %v, want %s at %s (the version read)", b.intake.rejected, key, etag)
	}
}

func TestBadSpecIsRejectedNotClaimed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		body   string
		reason string // a part of it
	}{
		{"not JSON", "{", "not JSON"},
		{"not an object", "[]", "not a JSON object"},
		{"too large", strings.Repeat(" ", 1<<20+1), "over the limit"}, // setup's MaxSpecBytes + 1
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, Config{})
			withBody(t, b, tt.body)
			p.process(item)
			if b.claims != 0 {
				t.Errorf("a bad spec was claimed")
			}
			if len(b.rejected) != 1 || !strings.Contains(b.rejected[0], tt.reason) {
				t.Errorf("rejections %q, want one with %q", b.rejected, tt.reason)
			}
		})
	}
}

func TestLosingTheSpecMarksTheListingStale(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		gone  bool // pending/ deleted before the peek
		claim error
	}{
		{"gone before peek", true, nil},
		{"claim held elsewhere", false, fmt.Errorf("create lease: %w", protocol.ErrHeld)},
		{"pending changed during the claim", false, fmt.Errorf("confirm: %w", protocol.ErrGone)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, Config{})
			if tt.gone {
				if err := b.store.Delete(context.Background(), key, ""); err != nil {
					t.Fatal(err)
				}
			}
			if tt.claim != nil {
				b.proto.claim = func(context.Context, <-chan struct{}, protocol.Spec) (Claim, error) { return nil, tt.claim }
			}
			b.runner.run = func(context.Context, string, string, func(exec.Cell)) exec.Result {
				t.Error("a cell ran for a spec this node does not hold")
				return exec.Result{}
			}
			p.process(item)
			if len(b.intake.stale) != 1 || b.intake.stale[0] != key {
				t.Errorf("lister told stale %v, want [%s]", b.intake.stale, key)
			}
		})
	}
}

func TestClaimFailureIsRetriedNotStale(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	b.proto.claim = func(context.Context, <-chan struct{}, protocol.Spec) (Claim, error) {
		return nil, fmt.Errorf("create lease: %w", store.ErrUnknown)
	}
	p.process(item)
	if len(b.intake.stale) != 0 {
		t.Errorf("lister told stale %v on an unknown outcome, want nothing: the key stays work", b.intake.stale)
	}
}

func TestCellThatEndsOnItsOwnIsFinished(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		res     exec.Result
		outcome protocol.Outcome
		reason  string
	}{
		{"exit 0", exec.Result{}, protocol.Completed, ""},
		{"exit 3", exec.Result{ExitCode: 3}, protocol.Failed, "supervisor exit 3"},
		{"killed", exec.Result{ExitCode: -1, Signal: "SIGKILL"}, protocol.Failed, "supervisor killed by SIGKILL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, Config{})
			var ran string
			b.runner.run = func(_ context.Context, _, specID string, started func(exec.Cell)) exec.Result {
				started(&fakeCell{})
				ran = specID
				return tt.res
			}
			p.process(item)
			if ran != "x" {
				t.Errorf("supervisor ran for %q, want x", ran)
			}
			if len(b.claim.released) != 0 || len(b.claim.finished) != 1 {
				t.Fatalf("released %v, finished %+v; want one Finish", b.claim.released, b.claim.finished)
			}
			if rec := b.claim.finished[0]; rec.Outcome != tt.outcome || rec.Reason != tt.reason || rec.Started.IsZero() {
				t.Errorf("finished with %q %q (started %v), want %q %q", rec.Outcome, rec.Reason, rec.Started, tt.outcome, tt.reason)
			}
		})
	}
}

func TestStartFailureReleasesUncountedAndBreaksTheHost(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	b.runner.run = func(context.Context, string, string, func(exec.Cell)) exec.Result {
		return exec.Result{ExitCode: -1, StartErr: errors.New("exec: permission denied")}
	}
	p.process(item)
	if len(b.claim.finished) != 0 || len(b.claim.released) != 1 || b.claim.released[0] {
		t.Errorf("finished %+v, released %v; want one Release not counting the run", b.claim.finished, b.claim.released)
	}
	if p.HostBroken() == nil {
		t.Error("host not broken after a start failure")
	}
}

// blockingRunner runs a cell until its context ends, closing running once it
// runs.
func blockingRunner(running chan<- struct{}) func(context.Context, string, string, func(exec.Cell)) exec.Result {
	return func(ctx context.Context, _, _ string, started func(exec.Cell)) exec.Result {
		started(&fakeCell{})
		close(running)
		<-ctx.Done()
		return exec.Result{ExitCode: -1, Signal: "SIGTERM", Stopped: true}
	}
}

func TestFencedCellIsReleasedUncounted(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	running := make(chan struct{})
	b.runner.run = blockingRunner(running)
	go func() {
		<-running
		b.claim.set(true, false) // the session could not be renewed in time
	}()
	p.process(item)
	if len(b.claim.finished) != 0 || len(b.claim.released) != 1 || b.claim.released[0] {
		t.Errorf("finished %+v, released %v; want one Release not counting the run", b.claim.finished, b.claim.released)
	}
}

// fakeCell is a cell that runs until it is killed or its context ends, and
// records what fleetd did to it; exit makes it end on its own.
type fakeCell struct {
	mu     sync.Mutex
	events []string
	saw    chan string // each event, as it happens
	end    chan string // "killed", or "exit"
}

func newFakeCell() *fakeCell {
	return &fakeCell{saw: make(chan string, 16), end: make(chan string, 2)}
}

func (c *fakeCell) note(e string) error {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
	if c.saw != nil {
		c.saw <- e
	}
	return nil
}

func (c *fakeCell) Freeze() error { return c.note("freeze") }
func (c *fakeCell) Thaw() error   { return c.note("thaw") }
func (c *fakeCell) Kill() error {
	if c.end != nil {
		c.end <- "killed"
	}
	return c.note("kill")
}

func (c *fakeCell) run(ctx context.Context, _, _ string, started func(exec.Cell)) exec.Result {
	started(c)
	select {
	case how := <-c.end:
		if how == "exit" {
			return exec.Result{}
		}
		return exec.Result{ExitCode: -1, Signal: "SIGKILL"}
	case <-ctx.Done():
		return exec.Result{ExitCode: -1, Signal: "SIGTERM", Stopped: true}
	}
}

func (c *fakeCell) await(t *testing.T, want string) {
	t.Helper()
	if got := <-c.saw; got != want {
		t.Fatalf("cell got %q, want %q", got, want)
	}
}

func TestLapsedCellIsFrozenThenThawedAndFinished(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{Freeze: true})
	cell := newFakeCell()
	b.runner.run = cell.run
	go func() {
		b.claim.set(true, false) // the session could not be renewed in time
		cell.await(t, "freeze")
		b.claim.set(false, false) // renewed: the claim is still ours
		cell.await(t, "thaw")
		cell.end <- "exit"
	}()
	p.process(item)
	if len(b.claim.finished) != 1 || b.claim.finished[0].Outcome != protocol.Completed || len(b.claim.released) != 0 {
		t.Errorf("finished %+v, released %v; want the cell's own result, completed", b.claim.finished, b.claim.released)
	}
	if got := fmt.Sprint(cell.events); got != "[freeze thaw]" {
		t.Errorf("cell events %s, want [freeze thaw]", got)
	}
}

func TestFrozenCellTakenOverIsKilledAndNothingWritten(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{Freeze: true})
	cell := newFakeCell()
	b.runner.run = cell.run
	go func() {
		b.claim.set(true, false)
		cell.await(t, "freeze")
		b.claim.set(true, true) // the session was ended and the lease taken over
	}()
	p.process(item)
	if len(b.claim.finished) != 0 || len(b.claim.released) != 0 || !b.claim.dropped {
		t.Errorf("finished %+v, released %v, dropped %v; want nothing written, the claim dropped", b.claim.finished, b.claim.released, b.claim.dropped)
	}
	if got := fmt.Sprint(cell.events); got != "[freeze kill]" {
		t.Errorf("cell events %s, want [freeze kill] (never thawed)", got)
	}
}

func TestCellEndedWhileLapsedKeepsItsResult(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{Freeze: true})
	b.runner.run = func(_ context.Context, _, _ string, started func(exec.Cell)) exec.Result {
		started(&fakeCell{})
		b.claim.set(true, false) // the store went away as the cell ended
		return exec.Result{}
	}
	b.claim.onWrite = func() {
		if valid, _, _ := b.claim.Hold(); valid {
			t.Error("the result was written by a fake that was never renewed")
		}
	}
	p.process(item)
	if len(b.claim.finished) != 1 || b.claim.finished[0].Outcome != protocol.Completed || len(b.claim.released) != 0 {
		t.Errorf("finished %+v, released %v; want the result held and written, not a rerun", b.claim.finished, b.claim.released)
	}
}

func TestDrainDeadlineReleasesUncounted(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	running := make(chan struct{})
	b.runner.run = blockingRunner(running)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.process(item)
	}()
	<-running
	past, cancel := context.WithCancel(context.Background())
	cancel()
	if stopped := b.drain.Drain(past); !stopped {
		t.Error("Drain reports no cell stopped")
	}
	<-done // Drain waited for it: the claim was settled first
	if len(b.claim.finished) != 0 || len(b.claim.released) != 1 || b.claim.released[0] {
		t.Errorf("finished %+v, released %v; want one Release not counting the run", b.claim.finished, b.claim.released)
	}
}

func TestCellTimeoutFinishesWithOutcomeTimeout(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{CellTimeout: 10 * time.Millisecond})
	b.runner.run = blockingRunner(make(chan struct{}))
	p.process(item)
	if len(b.claim.released) != 0 || len(b.claim.finished) != 1 {
		t.Fatalf("released %v, finished %+v; want one Finish", b.claim.released, b.claim.finished)
	}
	if rec := b.claim.finished[0]; rec.Outcome != protocol.Failed || !rec.TimedOut || rec.Reason != "timeout" {
		t.Errorf("finished with %q %q, want outcome timeout, reason timeout", rec.Outcome, rec.Reason)
	}
}

func TestNothingIsClaimedOnceTheDrainBegins(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	b.drain.CloseIntake()
	p.process(item)
	if b.claims != 0 {
		t.Errorf("%d claims after the drain began, want 0", b.claims)
	}
}

func TestCancelledCellIsFiledCancelled(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	running := make(chan struct{})
	b.runner.run = blockingRunner(running)
	go func() {
		<-running
		close(b.claim.cancelled) // fleetd cancel marked the lease
	}()
	p.process(item)
	if len(b.claim.released) != 0 || len(b.claim.finished) != 1 {
		t.Fatalf("finished %+v, released %v; want one Finish", b.claim.finished, b.claim.released)
	}
	if rec := b.claim.finished[0]; rec.Outcome != protocol.Cancelled || rec.Reason != "cancelled by alice@host" {
		t.Errorf("record = %+v, want outcome cancelled, by alice@host", rec)
	}
}

// TestCancelHeardBeforeTheRunStartsNoCell: a lease marked while claiming,
// its holder told through the session's ring before its cell started (the
// tool then reports the holder stops it): no cell is started, and the spec
// is filed cancelled. Found by the simulator, seed 111178: the cell started
// 9 ms after the tool said so.
func TestCancelHeardBeforeTheRunStartsNoCell(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	close(b.claim.cancelled)
	started := false
	b.runner.run = func(_ context.Context, _, _ string, cell func(exec.Cell)) exec.Result {
		started = true
		cell(&fakeCell{})
		return exec.Result{}
	}
	p.process(item)
	if started {
		t.Error("a cell was started for a claim whose cancel mark its holder had read")
	}
	if len(b.claim.released) != 0 || len(b.claim.finished) != 1 {
		t.Fatalf("finished %+v, released %v; want one Finish", b.claim.finished, b.claim.released)
	}
	if rec := b.claim.finished[0]; rec.Outcome != protocol.Cancelled {
		t.Errorf("record = %+v, want outcome cancelled", rec)
	}
}

func TestPanicInTheRunFailsTheSpec(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	b.runner.run = func(context.Context, string, string, func(exec.Cell)) exec.Result { panic("boom") }
	p.process(item)
	if len(b.claim.released) != 0 || len(b.claim.finished) != 1 {
		t.Fatalf("finished %+v, released %v; want the claim ended with one result", b.claim.finished, b.claim.released)
	}
	if rec := b.claim.finished[0]; rec.Outcome != protocol.Failed || !strings.Contains(rec.Reason, "worker panic: boom") {
		t.Errorf("record = %+v, want outcome failed, reason naming the panic", rec)
	}
}

func TestPanicAfterTheRunLeavesTheClaimToRecovery(t *testing.T) {
	t.Parallel()
	p, b := setup(t, Config{})
	b.claim.onWrite = func() { panic("boom") }
	func() {
		defer func() { _ = recover() }()
		p.process(item)
	}()
	if !b.claim.dropped {
		t.Error("claim not dropped after a panic past the run: its lease would be renewed for ever")
	}
}
