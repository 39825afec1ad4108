package queueview

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// Snapshot is the queue as one refresh saw it. Ages are on the server's
// clock (LastModified against the listing's Date), so a skewed browser or UI
// host does not change them.
type Snapshot struct {
	// Paused: the lane's pause marker is there (fleetd pause).
	Paused bool
	Counts []Count
	// OldestPending is the age of the oldest pending spec listed; with the
	// pending count a lower bound, it is a lower bound too.
	OldestPending time.Duration
	// InFlight joins claimed/ and leases/ by id, sorted by id.
	InFlight []Flight
	// Delayed are the specs under pending/.delayed/ (retries, submit --in),
	// soonest first, as many as the pending listing held.
	Delayed []Delayed
	// Failures are the latest failures, newest first, and Nodes every
	// node named by a lease or one of the latest results: with Parts.Results
	// only.
	Failures []Failure
	Nodes    []Node
	// Problems are what could not be read; the rest of the snapshot stands.
	Problems []error
}

// Flight is one spec in flight: a claimed/ object, a lease, or both.
type Flight struct {
	ID       string
	Node     string
	Attempt  int
	State    string // the lease's state; NoLease or Unreadable
	LeaseAge time.Duration
	// Running is how long ago claimed/ was written: about when the cell started.
	Running  time.Duration
	HasClaim bool
	// Stale: past ttl + 1 s since its last write, so recovery may take it over.
	Stale bool
}

// What Flight.State says when the lease does not.
const (
	NoLease    = "no lease"   // a claim without a lease
	Unreadable = "unreadable" // a lease that could not be parsed
)

// Failure is one spec in failed/ with its result record.
type Failure struct {
	ID  string
	Age time.Duration // since the record was written
	protocol.RecordInfo
}

// Result is a node's latest result among those read.
type Result struct {
	ID      string
	Outcome string
	Reason  string
	Age     time.Duration
}

// Node is every node seen in a lease or a recent result.
type Node struct {
	Name    string
	Running []string // ids it holds leases on now
	Last    *Result
}

// Reader takes snapshots of one lane. It caches what it read by key and
// version, so a refresh reads only what changed: a result record is HEADed
// once, a lease once per renewal. It is safe for concurrent use; snapshots
// are taken one at a time.
type Reader struct {
	store  Store
	layout store.Layout
	ttl    time.Duration // ours, for a claim with no lease to read one from
	lim    Limits

	mu      sync.Mutex
	records map[string]cached[store.Object]
	leases  map[string]cached[leaseRead]
}

// cached is a read of one version of an object.
type cached[T any] struct {
	version string
	value   T
}

type leaseRead struct {
	info protocol.LeaseInfo
	ok   bool // false: the lease could not be parsed
}

// version identifies what was read. A result's ETag is its spec bytes', the
// same for every run of them, so the write time is part of it.
func version(o store.Object) string {
	return o.ETag + "@" + o.LastModified.UTC().Format(time.RFC3339Nano)
}

// NewReader returns a reader of layout on store. ttl is the agents' lease
// ttl, by which a claim with no lease is judged.
func NewReader(storage Store, layout store.Layout, ttl time.Duration, lim Limits) *Reader {
	return &Reader{store: storage, layout: layout, ttl: ttl, lim: lim.withDefaults(),
		records: map[string]cached[store.Object]{}, leases: map[string]cached[leaseRead]{}}
}

// Parts are the parts of a snapshot that cost requests beyond one listing of
// each state and a GET of each lease.
type Parts struct {
	// Results: HEAD the latest results of failed/ and completed/ (up to
	// Limits.Results each, once per version) for Failures and Nodes.
	Results bool
	// Sessions: list sessions/ when a lease names a session, to judge
	// whether it is stale. Without it such a lease is never marked stale.
	Sessions bool
}

// Snapshot reads the queue: pending/, claimed/, completed/, failed/ and
// leases/ listed (up to Limits.Keys each), new lease versions read (up to
// Limits.Leases), and the parts asked for. It fails only when no state could
// be listed; a part that could not be read is in Problems.
func (r *Reader) Snapshot(ctx context.Context, parts Parts) (*Snapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Snapshot{Counts: []Count{}, InFlight: []Flight{}, Delayed: []Delayed{}, Failures: []Failure{}, Nodes: []Node{}}
	// claimed/ before leases/, as recovery lists them: a claim whose lease
	// appears in between is live, since a holder writes its lease first.
	lists := map[store.Area]Listing{}
	var firstErr error
	for _, st := range []store.Area{store.Pending, store.Claimed, store.Completed, store.Failed, store.Leases} {
		l, err := List(ctx, r.store, r.layout, st, r.lim.Keys)
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			s.Problems = append(s.Problems, err)
			continue
		}
		lists[st] = l
		if st != store.Leases {
			s.Counts = append(s.Counts, l.Count())
		}
	}
	if len(lists) == 0 {
		return nil, fmt.Errorf("read the queue: %w", firstErr)
	}
	pending := lists[store.Pending]
	s.Paused = pending.Paused
	s.Delayed = append(s.Delayed, pending.Delayed...)
	slices.SortFunc(s.Delayed, func(a, b Delayed) int { return a.Due.Compare(b.Due) })
	s.OldestPending = pending.Oldest()
	s.InFlight = r.inFlight(ctx, lists[store.Claimed], lists[store.Leases], parts.Sessions, s)
	if !parts.Results {
		return s, nil
	}
	failed := r.latest(ctx, store.Failed, lists[store.Failed], s)
	completed := r.latest(ctx, store.Completed, lists[store.Completed], s)
	for _, o := range failed {
		id, _ := r.layout.ID(store.Failed, o.Key)
		s.Failures = append(s.Failures, Failure{ID: id, Age: age(o), RecordInfo: protocol.ParseRecord(o.Metadata)})
	}
	s.Nodes = nodes(r.layout, s.InFlight, failed, completed)
	return s, nil
}

// age is how old o was when it was read, never negative.
func age(o store.Object) time.Duration {
	return max(0, o.ServerTime.Sub(o.LastModified).Round(time.Second))
}

// inFlight joins claimed/ and leases/ by id, reading each lease (once per
// version) for its node, attempt and state.
func (r *Reader) inFlight(ctx context.Context, claimed, leases Listing, judgeSessions bool, s *Snapshot) []Flight {
	byID := map[string]*Flight{}
	var order []string
	get := func(id string) *Flight {
		f, ok := byID[id]
		if !ok {
			f = &Flight{ID: id}
			byID[id] = f
			order = append(order, id)
		}
		return f
	}
	for _, o := range claimed.Objects {
		id, _ := r.layout.ID(store.Claimed, o.Key)
		f := get(id)
		f.HasClaim = true
		f.Running = max(0, claimed.ServerTime.Sub(o.LastModified).Round(time.Second))
		// Without a lease, the claim is judged by our ttl, as recovery does.
		f.State, f.LeaseAge = NoLease, f.Running
		f.Stale = protocol.Stale(claimed.ServerTime.Sub(o.LastModified), r.ttl)
	}
	seen := map[string]bool{}
	reads := 0
	var sessions map[string]time.Duration // listed once, if a lease names one
	var sessionsErr error
	for _, o := range leases.Objects {
		id, _ := r.layout.ID(store.Leases, o.Key)
		seen[o.Key] = true
		c, ok := r.leases[o.Key]
		if !ok || c.version != version(o) {
			if reads == r.lim.Leases {
				continue // shown at the next refresh
			}
			reads++
			lr, err := r.readLease(ctx, o.Key)
			if errors.Is(err, store.ErrNotFound) {
				continue // finished since the listing
			}
			if err != nil {
				s.Problems = append(s.Problems, fmt.Errorf("read lease of %s: %w", id, err))
				continue
			}
			c = cached[leaseRead]{version: version(o), value: lr}
			r.leases[o.Key] = c
		}
		f := get(id)
		// The age is the listing's: a cached read is as old as its version.
		a := leases.ServerTime.Sub(o.LastModified)
		f.LeaseAge = max(0, a.Round(time.Second))
		if !c.value.ok {
			f.State, f.Stale = Unreadable, protocol.Stale(a, r.ttl)
			continue
		}
		l := c.value.info
		f.Node, f.Attempt, f.State = l.Node, l.Attempts, l.Shown(f.HasClaim)
		f.Stale = protocol.Stale(a, l.TTL)
		if l.Session != "" {
			// Alive while its session is, however old the lease.
			if !judgeSessions {
				f.Stale = false
				continue
			}
			if sessions == nil {
				sessions, sessionsErr = r.sessions(ctx)
			}
			age, ok := sessions[l.Session]
			f.Stale = sessionsErr == nil && (!ok || protocol.Stale(age, l.TTL))
		}
	}
	for k := range r.leases {
		if !seen[k] {
			delete(r.leases, k)
		}
	}
	out := make([]Flight, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	slices.SortFunc(out, func(a, b Flight) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// sessions lists the agents' sessions: token → age of its last write, by the
// server's clock.
func (r *Reader) sessions(ctx context.Context) (map[string]time.Duration, error) {
	ages := map[string]time.Duration{}
	err := r.store.List(ctx, r.layout.Dir(store.Sessions), func(p store.Page) error {
		for _, o := range p.Objects {
			if tok, ok := r.layout.ID(store.Sessions, o.Key); ok {
				ages[tok] = p.ServerTime.Sub(o.LastModified)
			}
		}
		return nil
	})
	return ages, err
}

func (r *Reader) readLease(ctx context.Context, key string) (leaseRead, error) {
	o, err := r.store.Get(ctx, key, protocol.MaxLeaseBytes)
	if err != nil && !errors.Is(err, store.ErrTooLarge) {
		return leaseRead{}, err
	}
	info, perr := protocol.ParseLease(o.Body)
	return leaseRead{info: info, ok: err == nil && perr == nil}, nil
}

// headers bounds the HEAD requests of one refresh that run at once.
const headers = 8

// latest returns the newest results of a Listing, newest first, with their
// metadata (HEAD, once per version). S3 lists in key order, so "newest" is
// among the keys listed: with the count a lower bound, newer ones may exist.
func (r *Reader) latest(ctx context.Context, st store.Area, l Listing, s *Snapshot) []store.Object {
	objs := slices.Clone(l.Objects)
	slices.SortFunc(objs, func(a, b store.Object) int {
		return cmp.Or(b.LastModified.Compare(a.LastModified), cmp.Compare(a.Key, b.Key))
	})
	objs = objs[:min(len(objs), r.lim.Results)]
	// Drop the cached records of this state that are no longer among the
	// latest, so the cache holds at most the latest of each state.
	keep := map[string]bool{}
	for _, o := range objs {
		keep[o.Key] = true
	}
	dir := r.layout.Dir(st)
	for k := range r.records {
		if strings.HasPrefix(k, dir) && !keep[k] {
			delete(r.records, k)
		}
	}
	out := make([]store.Object, len(objs))
	errs := make([]error, len(objs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, headers)
	for i, o := range objs {
		if c, ok := r.records[o.Key]; ok && c.version == version(o) {
			out[i] = c.value
			out[i].ServerTime = l.ServerTime
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			h, err := r.store.Head(ctx, o.Key)
			if err != nil {
				errs[i] = err
				return
			}
			// Keep the listing's version: a HEAD of a newer version
			// would be cached under the older one otherwise.
			h.ETag, h.LastModified = o.ETag, o.LastModified
			out[i] = h
		})
	}
	wg.Wait()
	res := make([]store.Object, 0, len(out))
	for i, o := range out {
		switch {
		case errors.Is(errs[i], store.ErrNotFound):
			// requeued or pruned since the listing
		case errs[i] != nil:
			s.Problems = append(s.Problems, fmt.Errorf("read %s: %w", objs[i].Key, errs[i]))
		default:
			r.records[o.Key] = cached[store.Object]{version: version(o), value: o}
			res = append(res, o)
		}
	}
	return res
}

// nodes gathers every node named by a lease or a recent result.
func nodes(layout store.Layout, inFlight []Flight, failed, completed []store.Object) []Node {
	byName := map[string]*Node{}
	get := func(name string) *Node {
		n, ok := byName[name]
		if !ok {
			n = &Node{Name: name, Running: []string{}}
			byName[name] = n
		}
		return n
	}
	for _, f := range inFlight {
		if f.Node != "" {
			n := get(f.Node)
			n.Running = append(n.Running, f.ID)
		}
	}
	// The newest result per node, across both states.
	for _, results := range []struct {
		st   store.Area
		objs []store.Object
	}{{store.Failed, failed}, {store.Completed, completed}} {
		st := results.st
		for _, o := range results.objs {
			rec := protocol.ParseRecord(o.Metadata)
			if rec.Node == "" {
				continue
			}
			n := get(rec.Node)
			a := age(o)
			if n.Last == nil || a < n.Last.Age {
				id, _ := layout.ID(st, o.Key)
				n.Last = &Result{ID: id, Outcome: cmp.Or(rec.Outcome, string(st)), Reason: rec.Reason, Age: a}
			}
		}
	}
	out := make([]Node, 0, len(byName))
	for _, n := range byName {
		out = append(out, *n)
	}
	slices.SortFunc(out, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
