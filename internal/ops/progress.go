package ops

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cellos/fleetd/internal/exec"
)

// Runner runs the supervisor on one spec file, calling started (if not nil)
// once it runs. It is the pipeline's runner, declared here so that Progress
// can wrap it without ops depending on the pipeline.
type Runner interface {
	Run(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result
}

// Progress records the signs that fleetd's loops are turning, for /healthz
// and /readyz. It is fed from the two places main wires: the supervisor
// runner (a cell started or ended) and the S3 request observer. It counts no
// cells itself: the agent does (CountCells). It is safe for concurrent use.
type Progress struct {
	last    atomic.Int64 // unix nanos of the last sign of progress
	started atomic.Int64 // unix nanos of the last cell start
	cells   atomic.Pointer[func() int]
}

// CountCells tells p where to read the number of cells running now (the
// agent's own count); until then it reads none running.
func (p *Progress) CountCells(cells func() int) { p.cells.Store(&cells) }

// running is the number of cells running now.
func (p *Progress) running() int {
	if f := p.cells.Load(); f != nil {
		return (*f)()
	}
	return 0
}

// NewProgress returns a Progress whose liveness window starts at now, the
// start of the process.
func NewProgress(now time.Time) *Progress {
	p := &Progress{}
	p.last.Store(now.UnixNano())
	return p
}

// Runner wraps r so that each cell's start and end count as progress (as
// times, not as a count of cells).
func (p *Progress) Runner(r Runner) Runner { return progressRunner{r, p} }

type progressRunner struct {
	Runner
	p *Progress
}

func (r progressRunner) Run(ctx context.Context, specPath, specID string, started func(exec.Cell)) exec.Result {
	res := r.Runner.Run(ctx, specPath, specID, func(cell exec.Cell) {
		now := time.Now().UnixNano()
		r.p.started.Store(now)
		r.p.last.Store(now)
		if started != nil {
			started(cell)
		}
	})
	r.p.last.Store(time.Now().UnixNano())
	return res
}

// S3Attempt is told of every S3 request attempt (status 0: no answer). A
// failed attempt counts as progress: it shows a loop trying, and an S3 outage
// is not something a restart fixes (it would only add a crash back-off to the
// outage). A successful one counts only while a cell runs, when it stands for
// the lease renewals (every ttl/3) of a cell that may run for hours; an idle
// agent shows progress by listing pending/.
func (p *Progress) S3Attempt(status int) {
	failed := status == 0 || status == http.StatusTooManyRequests || status >= 500
	if failed || p.running() > 0 {
		p.last.Store(time.Now().UnixNano())
	}
}
