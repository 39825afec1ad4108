// Package drain stops a daemon's work in order: close intake, let work in flight
// finish, and past a deadline stop it.
package drain

import (
	"context"
	"sync"
	"time"
)

// Drainer tracks work in flight and owns the three contexts that stop it:
// Intake ends when no new work may start, Work ends when running work must
// stop, and Abort a fixed time after Work, when even the bookkeeping of
// stopped work must give up (the daemon's protocol leaves it to recovery).
type Drainer struct {
	mu          sync.Mutex
	closed      bool
	wg          sync.WaitGroup
	intake      context.Context
	closeIntake context.CancelFunc
	work        context.Context
	stopWork    context.CancelFunc
	abort       context.Context
	stopAll     context.CancelFunc
	abortAfter  time.Duration
}

// New returns a Drainer whose contexts also end with parent; Abort ends
// abortAfter after Work.
func New(parent context.Context, abortAfter time.Duration) *Drainer {
	d := &Drainer{abortAfter: abortAfter}
	d.intake, d.closeIntake = context.WithCancel(parent)
	d.work, d.stopWork = context.WithCancel(parent)
	d.abort, d.stopAll = context.WithCancel(parent)
	context.AfterFunc(d.work, func() {
		time.AfterFunc(d.abortAfter, d.stopAll)
	})
	return d
}

// Intake is done once the drain has begun: stop looking for new work.
func (d *Drainer) Intake() context.Context { return d.intake }

// Work is done once running work must stop: the drain deadline passed.
func (d *Drainer) Work() context.Context { return d.work }

// Abort is done abortAfter once Work is done: work still winding down must
// give up then, so the drain's bound holds even when its I/O hangs.
func (d *Drainer) Abort() context.Context { return d.abort }

// Begin registers one unit of work and reports whether it may start. It returns
// false from the moment the drain begins, so no work starts after that; a true
// answer must be paired with End.
func (d *Drainer) Begin() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

// End marks one unit of work begun with Begin as finished.
func (d *Drainer) End() { d.wg.Done() }

// CloseIntake ends Intake: from now on Begin returns false.
func (d *Drainer) CloseIntake() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.closeIntake()
}

// Drain closes intake and blocks until all work has ended. If deadline ends
// first, it cancels Work and keeps waiting for the work to wind down; stopped
// reports whether that happened.
func (d *Drainer) Drain(deadline context.Context) (stopped bool) {
	d.CloseIntake()

	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return false
	case <-deadline.Done():
	}
	d.stopWork()
	<-done
	return true
}
