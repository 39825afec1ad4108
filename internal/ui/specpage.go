package ui

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// specPage is everything the records know of one spec.
type specPage struct {
	ID string
	// State is the state whose bytes are shown; States every state the id
	// is in now.
	State  string
	States []string
	Body   string
	Size   int64
	Cut    bool
	Err    string

	// Submitted is when pending/ was written (store clock); PriorAttempts
	// its attempt count (runs before).
	Submitted     time.Time
	PriorAttempts string
	// Claimed is when claimed/ was written: the claim of the run in flight.
	Claimed      time.Time
	ClaimedNode  string
	ClaimAttempt string
	// Lease is the lease of a spec in flight.
	Lease    *protocol.LeaseInfo
	LeaseAge time.Duration
	// Result is the result record, from ResultState (completed or failed).
	Result      *protocol.RecordInfo
	ResultState string
	Written     time.Time
	Duration    time.Duration

	Output *pageOutput
}

// pageOutput is the spec's output object.
type pageOutput struct {
	protocol.OutputInfo
	Text    string
	Size    int64
	Cut     bool // over OutputLimit: not shown
	Written time.Time
	// Other: it came from another run than the result's (a requeue left
	// it, or recovery wrote the result without one).
	Other bool
}

// spec shows what the records know of a spec: where it is, its result
// record, its lease, its output, its bytes — all rendered as text.
// ?state= picks whose bytes are shown (default: the result's, else
// claimed/'s, else pending/'s). It costs 4 HEADs and up to 3 GETs.
func (s *Server) spec(w http.ResponseWriter, r *http.Request) {
	id, state := r.URL.Query().Get("id"), store.Area(r.URL.Query().Get("state"))
	switch state {
	case "", store.Pending, store.Claimed, store.Completed, store.Failed:
	default:
		http.Error(w, "fleetd ui: state is pending, claimed, completed or failed", http.StatusBadRequest)
		return
	}
	if err := s.cfg.Layout.CheckID(id); err != nil {
		http.Error(w, "fleetd ui: not a spec id", http.StatusBadRequest)
		return
	}
	data, status := s.readSpec(r.Context(), id, state)
	if status != http.StatusOK {
		w.WriteHeader(status)
	}
	s.render(w, "spec.html", data)
}

func (s *Server) readSpec(ctx context.Context, id string, want store.Area) (specPage, int) {
	data := specPage{ID: id, State: string(want)}
	states := []store.Area{store.Pending, store.Claimed, store.Completed, store.Failed}
	heads := make([]store.Object, len(states))
	errs := make([]error, len(states))
	var lease, output store.Object
	var leaseErr, outputErr error
	var wg sync.WaitGroup
	for i, st := range states {
		wg.Go(func() { heads[i], errs[i] = s.cfg.Store.Head(ctx, s.cfg.Layout.Key(st, id)) })
	}
	wg.Go(func() {
		lease, leaseErr = s.cfg.Store.Get(ctx, s.cfg.Layout.Key(store.Leases, id), protocol.MaxLeaseBytes)
	})
	wg.Go(func() { output, outputErr = s.cfg.Store.Get(ctx, s.cfg.Layout.OutputKey(id), s.cfg.OutputLimit) })
	wg.Wait()

	var problems []error
	found := map[store.Area]bool{}
	for i, st := range states {
		switch {
		case errs[i] == nil:
			found[st] = true
			data.States = append(data.States, string(st))
		case !errors.Is(errs[i], store.ErrNotFound):
			problems = append(problems, errs[i])
		}
	}
	if o := heads[0]; found[store.Pending] {
		data.Submitted, data.PriorAttempts = o.LastModified, o.Metadata["fleetd-attempts"]
	}
	if o := heads[1]; found[store.Claimed] {
		data.Claimed, data.ClaimedNode, data.ClaimAttempt = o.LastModified, o.Metadata["fleetd-node"], o.Metadata["fleetd-attempts"]
	}
	var resultMeta map[string]string
	for i, st := range []store.Area{store.Completed, store.Failed} {
		o := heads[2+i]
		// Both can exist only in a moment between a requeue's steps: the
		// newer is the record.
		if found[st] && (data.Result == nil || o.LastModified.After(data.Written)) {
			rec := protocol.ParseRecord(o.Metadata)
			data.Result, data.ResultState, data.Written, resultMeta = &rec, string(st), o.LastModified, o.Metadata
			if !rec.Started.IsZero() && !rec.Finished.IsZero() {
				data.Duration = rec.Finished.Sub(rec.Started).Round(time.Millisecond)
			}
		}
	}
	switch {
	case leaseErr == nil || errors.Is(leaseErr, store.ErrTooLarge):
		if l, err := protocol.ParseLease(lease.Body); err == nil {
			data.Lease = &l
			data.LeaseAge = max(0, lease.ServerTime.Sub(lease.LastModified).Round(time.Second))
		}
	case !errors.Is(leaseErr, store.ErrNotFound):
		problems = append(problems, leaseErr)
	}
	switch {
	case outputErr == nil, errors.Is(outputErr, store.ErrTooLarge):
		info := protocol.ParseOutput(output.Metadata)
		data.Output = &pageOutput{OutputInfo: info, Text: string(output.Body), Size: output.Size, Cut: outputErr != nil,
			Written: output.LastModified, Other: resultMeta != nil && !info.Matches(resultMeta)}
	case !errors.Is(outputErr, store.ErrNotFound):
		problems = append(problems, outputErr)
	}

	// The bytes: of the state asked for, else the result's, else claimed/'s,
	// else pending/'s.
	if want == "" {
		for _, st := range []store.Area{store.Completed, store.Failed, store.Claimed, store.Pending} {
			if found[st] {
				want = cmp.Or(store.Area(data.ResultState), st)
				break
			}
		}
	}
	data.State = string(want)
	status := http.StatusOK
	switch {
	case len(problems) > 0:
		data.Err = errors.Join(problems...).Error()
		status = http.StatusBadGateway
	case want == "":
		data.Err = "no such spec: not pending, claimed, completed or failed"
		if data.Lease == nil && data.Output == nil {
			status = http.StatusNotFound
		}
	case !found[want]:
		data.Err, status = fmt.Sprintf("not in %s/ (any more)", want), http.StatusNotFound
	default:
		o, err := s.cfg.Store.Get(ctx, s.cfg.Layout.Key(want, id), s.cfg.BodyLimit)
		switch {
		case errors.Is(err, store.ErrTooLarge):
			data.Size, data.Cut = o.Size, true
		case errors.Is(err, store.ErrNotFound):
			data.Err, status = fmt.Sprintf("not in %s/ (any more)", want), http.StatusNotFound
		case err != nil:
			data.Err, status = err.Error(), http.StatusBadGateway
		default:
			data.Body, data.Size = string(o.Body), o.Size
		}
	}
	return data, status
}
