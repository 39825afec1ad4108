// Package admin holds the queue rules of fleetd's tools — submit, status,
// requeue, inspect — so that the command line only parses flags and prints.
// Every write that moves a spec between states goes through the protocol.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/pool"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/gate"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queueview"
	"github.com/cellos/fleetd/internal/store"
)

// Store is the S3 queue as the tools use it: the read model's reads and the
// writes of pause, resume and prune. *store.Store implements it.
type Store interface {
	queueview.Store
	Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error)
	Delete(ctx context.Context, key, ifMatch string) error
	Dirs(ctx context.Context, prefix string) ([]string, error)
}

var _ Store = (*store.Store)(nil)

// ErrUsage marks an error in how a tool was called.
var ErrUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// Admin runs the tools on one queue.
type Admin struct {
	store        Store
	proto        *protocol.Protocol
	layout       store.Layout
	maxSpecBytes int64
}

// New returns the tools for layout on store.
func New(storage Store, proto *protocol.Protocol, layout store.Layout, maxSpecBytes int64) *Admin {
	return &Admin{store: storage, proto: proto, layout: layout, maxSpecBytes: maxSpecBytes}
}

// SpecFile is a spec to submit: its bytes and where they came from (a file
// name, or "-" for standard input), which names the spec when nothing else does.
type SpecFile struct {
	Name string
	Body []byte
}

// Submitted is one submitted spec.
type Submitted struct {
	ID  string `json:"id"`
	Key string `json:"key"`
	// NotBefore is when a delayed spec becomes pending (zero: at once).
	NotBefore time.Time `json:"not_before,omitzero"`
}

// SubmitOptions are the per-spec choices of fleetd submit.
type SubmitOptions struct {
	Replace bool
	// Retries, when not negative, is the spec's own retry limit, over the
	// agents' CELLOS_FLEET_RETRIES.
	Retries int
	// NotBefore, if set, delays the spec until then.
	NotBefore time.Time
}

// Submit checks every spec, then puts each in pending/. id, if set, names the
// one spec; otherwise spec.id, else the file name. Without replace a spec
// already pending or in flight is refused.
func (a *Admin) Submit(ctx context.Context, files []SpecFile, id string, replace bool) ([]Submitted, error) {
	return a.SubmitWith(ctx, files, id, SubmitOptions{Replace: replace, Retries: -1})
}

// SubmitWith is Submit with a spec's own retry limit and a time not to start
// before. A delayed spec is written under pending/.delayed/ and made pending
// by the fleet when due; it cannot replace a pending one.
func (a *Admin) SubmitWith(ctx context.Context, files []SpecFile, id string, opt SubmitOptions) ([]Submitted, error) {
	done := []Submitted{}
	replace := opt.Replace
	if replace && !opt.NotBefore.IsZero() {
		return done, usagef("submit: --replace cannot go with --in or --at")
	}
	if len(files) == 0 {
		return done, usagef("submit: no FILE given")
	}
	if id != "" && len(files) > 1 {
		return done, usagef("submit: --id needs exactly one FILE")
	}
	// Check every file before uploading any, so bad input changes nothing.
	type spec struct {
		id   string
		body []byte
	}
	var specs []spec
	for _, f := range files {
		sid, err := a.check(f, id)
		if err != nil {
			return done, err
		}
		if !opt.NotBefore.IsZero() {
			if n := len(a.layout.DelayedKey(sid, opt.NotBefore)); n > store.MaxKeyBytes {
				return done, fmt.Errorf("submit %s: id %q: its delayed key would be %d bytes, over S3's limit of %d", f.Name, sid, n, store.MaxKeyBytes)
			}
		}
		specs = append(specs, spec{sid, f.Body})
	}
	for _, s := range specs {
		if !replace {
			for _, st := range []store.Area{store.Pending, store.Claimed} {
				_, err := a.store.Head(ctx, a.layout.Key(st, s.id))
				if err == nil {
					return done, fmt.Errorf("submit: spec %s is already in %s/; use --replace to overwrite it", s.id, st)
				}
				if !errors.Is(err, store.ErrNotFound) {
					return done, fmt.Errorf("submit %s: %w", s.id, err)
				}
			}
		}
		key := a.layout.Key(store.Pending, s.id)
		popt := protocol.SubmitOptions{Replace: replace, NotBefore: opt.NotBefore}
		if opt.Retries >= 0 {
			popt.Metadata = protocol.RetryLimitMetadata(opt.Retries)
		}
		if !opt.NotBefore.IsZero() {
			key = a.layout.DelayedKey(s.id, opt.NotBefore)
		}
		if err := a.proto.SubmitWith(ctx, s.id, s.body, popt); err != nil {
			switch {
			case errors.Is(err, protocol.ErrPending):
				err = fmt.Errorf("spec %s was submitted meanwhile; use --replace to overwrite it", s.id)
			case errors.Is(err, protocol.ErrHeld):
				err = fmt.Errorf("spec %s is in flight; wait for it to finish or cancel it", s.id)
			}
			return done, fmt.Errorf("submit: %w", err)
		}
		done = append(done, Submitted{ID: s.id, Key: key, NotBefore: opt.NotBefore})
	}
	return done, nil
}

// check validates one spec and returns its id.
func (a *Admin) check(f SpecFile, id string) (string, error) {
	if int64(len(f.Body)) > a.maxSpecBytes {
		return "", fmt.Errorf("submit %s: %d bytes, over %s=%d", f.Name, len(f.Body), config.MaxSpecBytes, a.maxSpecBytes)
	}
	view, err := gate.Parse(f.Body)
	if err != nil {
		return "", fmt.Errorf("submit %s: %w", f.Name, err)
	}
	var doc map[string]json.RawMessage
	_ = json.Unmarshal(f.Body, &doc) // gate.Parse proved it is an object
	if s := doc["spec"]; len(s) == 0 || s[0] != '{' {
		return "", fmt.Errorf("submit %s: no \"spec\" object", f.Name)
	}
	if id == "" {
		id = view.ID
	}
	if id == "" && f.Name != "-" {
		id = strings.TrimSuffix(baseName(f.Name), ".json")
	}
	if id == "" {
		return "", usagef("submit %s: no spec id: give --id or spec.id", f.Name)
	}
	if err := a.layout.CheckID(id); errors.Is(err, store.ErrIDTooLong) {
		// fleetd leaves such a key alone: refuse it here rather than let it sit.
		return "", fmt.Errorf("submit %s: spec id of %d bytes is too long for this queue: %w", f.Name, len(id), err)
	}
	if _, ok := a.layout.ID(store.Pending, a.layout.Key(store.Pending, id)); !ok || strings.ContainsAny(id, " \t\n") {
		return "", fmt.Errorf("submit %s: %q is not a usable spec id (no '/', no spaces)", f.Name, id)
	}
	return id, nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Status is the queue at a glance. Ages are in seconds.
type Status struct {
	// Paused names who paused the lane ("" if it is not paused).
	Paused string         `json:"paused"`
	Counts map[string]int `json:"counts"`
	// AtLeast says, per state, that its count stopped at queueview.KeyLimit
	// with more to come.
	AtLeast              map[string]bool `json:"at_least"`
	OldestPendingSeconds float64         `json:"oldest_pending_seconds"`
	InFlight             []InFlight      `json:"in_flight"`
	// Delayed are the specs waiting under pending/.delayed/ (retries,
	// submit --in/--at), soonest first, up to queueview.KeyLimit
	// (Counts["delayed"]).
	Delayed []Delayed `json:"delayed"`
}

// Delayed is one spec not to start before Due.
type Delayed struct {
	ID  string    `json:"id"`
	Due time.Time `json:"due"`
	Key string    `json:"key"`
}

// InFlight is one spec held by a lease.
type InFlight struct {
	ID              string  `json:"id"`
	Node            string  `json:"node"`
	Attempts        int     `json:"attempts"`
	State           string  `json:"state"`
	LeaseAgeSeconds float64 `json:"lease_age_seconds"`
}

// Status counts the specs in each state (up to queueview.KeyLimit) and lists
// those in flight, as the read model sees them; it fails if any part could
// not be read. Who paused the lane is read only when it is paused.
func (a *Admin) Status(ctx context.Context) (Status, error) {
	res := Status{Counts: map[string]int{}, AtLeast: map[string]bool{}, InFlight: []InFlight{}, Delayed: []Delayed{}}
	v, err := queueview.NewReader(a.store, a.layout, 0, queueview.Limits{}).Snapshot(ctx, queueview.Parts{})
	if err == nil && len(v.Problems) > 0 {
		err = v.Problems[0]
	}
	if err != nil {
		return res, fmt.Errorf("status: %w", err)
	}
	if v.Paused {
		if res.Paused, err = a.pausedBy(ctx, a.layout); err != nil {
			return res, fmt.Errorf("status: %w", err)
		}
	}
	for _, c := range v.Counts {
		res.Counts[c.State], res.AtLeast[c.State] = c.N, c.AtLeast
	}
	res.Counts["delayed"], res.AtLeast["delayed"] = len(v.Delayed), len(v.Delayed) == queueview.KeyLimit
	res.OldestPendingSeconds = v.OldestPending.Round(time.Second).Seconds()
	for _, d := range v.Delayed {
		res.Delayed = append(res.Delayed, Delayed{ID: d.ID, Due: d.Due, Key: d.Key})
	}
	for _, f := range v.InFlight {
		if f.State == queueview.NoLease {
			continue // status lists leases; a bare claim is recovery's
		}
		res.InFlight = append(res.InFlight, InFlight{ID: f.ID, Node: f.Node, Attempts: f.Attempt, State: f.State,
			LeaseAgeSeconds: f.LeaseAge.Seconds()})
	}
	return res, nil
}

// Requeue moves specs from failed/ back to pending/ with a fresh attempt
// count: the ids given, or with all every failed spec older than olderThan.
func (a *Admin) Requeue(ctx context.Context, ids []string, all bool, olderThan time.Duration) ([]string, error) {
	done := []string{}
	switch {
	case all && len(ids) > 0:
		return done, usagef("requeue: give IDs or --failed, not both")
	case !all && len(ids) == 0:
		return done, usagef("requeue: give IDs or --failed")
	case olderThan != 0 && !all:
		return done, usagef("requeue: --older-than goes with --failed")
	}
	if all {
		err := a.store.List(ctx, a.layout.Dir(store.Failed), func(p store.Page) error {
			for _, o := range p.Objects {
				// Without --older-than, every one: the Date of the listing has
				// whole seconds, so a record of this second can look younger
				// than new.
				if id, ok := a.layout.ID(store.Failed, o.Key); ok && (olderThan == 0 || p.ServerTime.Sub(o.LastModified) >= olderThan) {
					ids = append(ids, id)
				}
			}
			return nil
		})
		if err != nil {
			return done, fmt.Errorf("requeue: %w", err)
		}
	}
	for _, id := range ids {
		err := a.proto.Requeue(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return done, fmt.Errorf("requeue: spec %s is not in failed/", id)
		case errors.Is(err, protocol.ErrHeld):
			return done, fmt.Errorf("requeue: spec %s is in flight; try again when it has finished", id)
		case err != nil:
			return done, fmt.Errorf("requeue: %w", err)
		}
		done = append(done, id)
	}
	return done, nil
}

// Inspection is where a spec is, its result record and its lease.
type Inspection struct {
	ID     string            `json:"id"`
	States []string          `json:"states"`
	Record map[string]string `json:"record"`
	Lease  json.RawMessage   `json:"lease"`
}

// ErrNoSpec: no state and no lease holds the id.
var ErrNoSpec = errors.New("no such spec")

// Inspect finds a spec in every state.
func (a *Admin) Inspect(ctx context.Context, id string) (Inspection, error) {
	res := Inspection{ID: id, States: []string{}, Record: map[string]string{}, Lease: json.RawMessage("null")}
	for _, st := range []store.Area{store.Pending, store.Claimed, store.Completed, store.Failed} {
		o, err := a.store.Head(ctx, a.layout.Key(st, id))
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return res, fmt.Errorf("inspect: %w", err)
		}
		res.States = append(res.States, string(st))
		if len(o.Metadata) > 0 && (len(res.Record) == 0 || st == store.Completed || st == store.Failed) {
			res.Record = o.Metadata
		}
	}
	l, err := a.store.Get(ctx, a.layout.Key(store.Leases, id), protocol.MaxLeaseBytes)
	switch {
	case err == nil:
		res.Lease = l.Body
	case !errors.Is(err, store.ErrNotFound):
		return res, fmt.Errorf("inspect: %w", err)
	}
	if len(res.States) == 0 && err != nil {
		// A HEAD answers a bare 404 for a missing bucket too; a listing says which.
		err := a.store.List(ctx, a.layout.Dir(store.Pending), func(store.Page) error { return errFirstPage })
		if err != nil && !errors.Is(err, errFirstPage) {
			return res, fmt.Errorf("inspect: %w", err)
		}
		return res, fmt.Errorf("inspect: spec %s not found under %s: %w", id, strings.TrimSuffix(a.layout.Dir(store.Pending), "pending/"), ErrNoSpec)
	}
	return res, nil
}

// errFirstPage stops a listing after its first page.
var errFirstPage = errors.New("first page")

// Pruned is what Prune did in one state.
type Pruned struct {
	State   string `json:"state"`
	Matched int    `json:"matched"`
	Deleted int    `json:"deleted"`
}

// Prune deletes the results in states (completed/, failed/) last written
// longer ago than olderThan by the server's clock. Each goes under its spec's
// lease, only if it is still the version listed and still that old (see
// protocol.Prune): a fresh result of an identical rerun is never taken for
// the one judged. Up to pruneWorkers at once. With dryRun it only counts.
func (a *Admin) Prune(ctx context.Context, states []store.Area, olderThan time.Duration, dryRun bool) ([]Pruned, error) {
	res := []Pruned{}
	for _, st := range states {
		if st != store.Completed && st != store.Failed {
			return res, usagef("prune: --state is completed or failed, not %q", st)
		}
		p := Pruned{State: string(st)}
		err := a.store.List(ctx, a.layout.Dir(st), func(page store.Page) error {
			var old []store.Object
			for _, o := range page.Objects {
				if _, ok := a.layout.ID(st, o.Key); ok && page.ServerTime.Sub(o.LastModified) > olderThan {
					old = append(old, o)
				}
			}
			p.Matched += len(old)
			if dryRun {
				return nil
			}
			n, err := a.pruneAll(ctx, old, olderThan)
			p.Deleted += n
			return err
		})
		res = append(res, p)
		if err != nil {
			return res, fmt.Errorf("prune %s: %w", st, err)
		}
	}
	return res, nil
}

// pruneWorkers bounds the prunes in flight: each is four requests, one
// after the other.
const pruneWorkers = 16

// pruneAll prunes objs and returns how many it deleted. One that changed or
// is in flight is left; any other failure is returned, after the rest.
func (a *Admin) pruneAll(ctx context.Context, objs []store.Object, olderThan time.Duration) (int, error) {
	var deleted atomic.Int64
	wp := pool.New().WithErrors().WithMaxGoroutines(pruneWorkers)
	for _, o := range objs {
		wp.Go(func() error {
			err := a.proto.Prune(ctx, o.Key, o.ETag, olderThan)
			switch {
			case err == nil:
				deleted.Add(1)
			case errors.Is(err, protocol.ErrGone), errors.Is(err, protocol.ErrHeld):
			default:
				return err
			}
			return nil
		})
	}
	err := wp.Wait()
	return int(deleted.Load()), err
}

// Cancel stops a spec: a pending or delayed one is filed under failed/ as
// cancelled, a running one is marked so that its holder stops it within a
// renewal period of its session (see protocol.Cancel). by says who asked,
// for the result record.
func (a *Admin) Cancel(ctx context.Context, id, by string) (protocol.CancelResult, error) {
	return a.proto.Cancel(ctx, id, by)
}

// pause is the body of a lane's pause marker.
type pause struct {
	By string `json:"by"`
	At string `json:"at"`
}

// Pause stops every agent on the lane (with all, on every lane under the
// prefix found now) from claiming within a poll interval: cells running
// finish, agents stay up. It returns the lanes paused, by their key prefix.
func (a *Admin) Pause(ctx context.Context, prefix string, all bool, by string) ([]string, error) {
	lanes, err := a.lanes(ctx, prefix, all)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(pause{By: by, At: time.Now().UTC().Format(time.RFC3339)})
	done := []string{}
	for _, l := range lanes {
		if _, err := a.store.Put(ctx, l.PauseKey(), body, store.PutOptions{}); err != nil {
			return done, fmt.Errorf("pause %s: %w", l.Base(), err)
		}
		done = append(done, l.Base())
	}
	return done, nil
}

// Resume undoes Pause.
func (a *Admin) Resume(ctx context.Context, prefix string, all bool) ([]string, error) {
	lanes, err := a.lanes(ctx, prefix, all)
	if err != nil {
		return nil, err
	}
	done := []string{}
	for _, l := range lanes {
		// The marker is a flag, not a spec: any version of it goes.
		if err := a.store.Delete(ctx, l.PauseKey(), ""); err != nil {
			return done, fmt.Errorf("resume %s: %w", l.Base(), err)
		}
		done = append(done, l.Base())
	}
	return done, nil
}

// lanes is this admin's lane, or with all the flat layout under prefix and
// every queue lane found below it (a directory holding a pending/).
func (a *Admin) lanes(ctx context.Context, prefix string, all bool) ([]store.Layout, error) {
	if !all {
		return []store.Layout{a.layout}, nil
	}
	flat := store.NewLayout(prefix, "")
	root := strings.TrimSuffix(flat.Dir(store.Pending), "pending/")
	dirs, err := a.store.Dirs(ctx, root)
	if err != nil {
		return nil, err
	}
	lanes := []store.Layout{flat}
	for _, d := range dirs {
		name := strings.TrimSuffix(strings.TrimPrefix(d, root), "/")
		switch store.Area(name) {
		case store.Pending, store.Claimed, store.Completed, store.Failed, store.Leases, "recovery", "selftest":
			continue
		}
		lane := store.NewLayout(prefix, name)
		sub, err := a.store.Dirs(ctx, d)
		if err != nil {
			return nil, err
		}
		if slices.Contains(sub, lane.Dir(store.Pending)) {
			lanes = append(lanes, lane)
		}
	}
	return lanes, nil
}

// pausedBy reads the lane's pause marker: who paused it, "" if nobody did.
func (a *Admin) pausedBy(ctx context.Context, l store.Layout) (string, error) {
	o, err := a.store.Get(ctx, l.PauseKey(), 4<<10)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "", nil
	case err != nil:
		return "", err
	}
	var p pause
	if json.Unmarshal(o.Body, &p) != nil || p.By == "" {
		return "someone", nil
	}
	return p.By, nil
}
