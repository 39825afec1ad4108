package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/pipeline"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// A Handle is what one process (an agent's incarnation, or one run of an
// operator tool) sees of the store: *store.Store's methods and error mapping,
// its retry loop included, with every attempt going through the bus.
type Handle struct {
	b      *bus
	name   string // the incarnation: n1, n1#2, op3
	node   string // the host: n1 (a network cut is the host's)
	role   string // "node" or the tool: submit, cancel, requeue, prune, pause, resume
	policy store.Policy
	seed   uint64
	mut    Mutations

	// dead: the process has exited; every new request is refused, with no
	// effect on the store. Requests already sent may still land.
	dead atomic.Bool
	pace store.Pace   // the SlowDown pause, as store.Store keeps it
	reqs atomic.Int64 // numbers each write call, whose attempts may land more than once

	mu       sync.Mutex
	seen     map[string]map[int64]bool // key → versions this process saw or wrote
	lastRead map[string]store.Object   // pending/ key → its last GET, for the confirm mutation
	lastVer  map[string]int64          // pending/ key → the version last seen there
	late     map[string]time.Time      // key → until when a timed-out write of ours may land
	unknown  map[string]bool           // keys of writes whose outcome was unknown (UnknownAsNotLanded)
	// versionedDeletes: deletes name versions (store.VersionedDeletes), and
	// replacing writes prune the versions they replace, as store.Store's do.
	versionedDeletes bool
	replaced         map[string]int // key → replacing writes since its last prune
}

var (
	_ protocol.Store = (*Handle)(nil)
	_ pipeline.Store = (*Handle)(nil)
	_ admin.Store    = (*Handle)(nil)
)

func newHandle(b *bus, name, node, role string, policy store.Policy, seed uint64, opt Options) *Handle {
	return &Handle{b: b, name: name, node: node, role: role, policy: policy, seed: seed, mut: opt.Mutations,
		versionedDeletes: opt.Store == store.VersionedDeletes,
		seen:             map[string]map[int64]bool{}, lastRead: map[string]store.Object{}, lastVer: map[string]int64{}, replaced: map[string]int{},
		late: map[string]time.Time{}, unknown: map[string]bool{}}
}

func (h *Handle) saw(key string, v int64) {
	if v == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[key] == nil {
		h.seen[key] = map[int64]bool{}
	}
	h.seen[key][v] = true
	if strings.Contains(key, "/pending/") {
		h.lastVer[key] = v
	}
}

func (h *Handle) hasSeen(key string, v int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[key][v]
}

func (h *Handle) pendingVersion(key string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastVer[key]
}

// errStatus is an HTTP answer with no sentinel of its own.
type errStatus int

func (e errStatus) Error() string {
	if e == 0 {
		return "no answer (attempt timed out)"
	}
	return fmt.Sprintf("status %d", int(e))
}

// errRefused answers every request of a process that has exited.
var errRefused = errors.New("process exited: request refused")

// refusal is how a process that has exited hears every request answered: a
// definite "no" of the kind that makes the protocol's loops end (a lease
// renewal that gets 412, then 404 on its read-back, gives the lease up), so
// the process's goroutines unwind without touching the store.
func refusal(op string) reply {
	switch op {
	case "PUT", "COPY", "DELETE":
		return reply{status: 412, err: fmt.Errorf("%w: %w", store.ErrPrecondition, errRefused)}
	case "GET", "HEAD":
		return reply{status: 404, err: fmt.Errorf("%w: %w", store.ErrNotFound, errRefused)}
	}
	return reply{status: 403, err: errRefused}
}

// call runs one operation through the bus with store.Store's retry policy:
// it returns the last reply and whether an earlier attempt may have landed.
func (h *Handle) call(ctx context.Context, op, key, cond string, exec func() reply) (rep reply, unsure bool) {
	return h.callChecked(ctx, op, key, cond, exec, nil)
}

// callChecked is call with recheck, if not nil, run before an attempt that
// follows one which may have landed: when it says done, its reply ends the
// call.
func (h *Handle) callChecked(ctx context.Context, op, key, cond string, exec func() reply, recheck func(context.Context) (reply, bool)) (rep reply, unsure bool) {
	if h.mut.UnknownAsNotLanded {
		defer func() { h.noteUnknown(op, key, rep, unsure) }()
		if r, ok := h.notLanded(op, key); ok {
			return r, false
		}
	}
	// As store.Store: first wait out a timed-out write of ours to key that
	// may still land.
	if d := time.Until(h.lateUntil(key)); d > 0 {
		if sleep(ctx, d) != nil {
			return reply{status: 0, err: ctx.Err()}, false
		}
	}
	write := op == "PUT" || op == "COPY" || op == "DELETE"
	for i := 0; ; i++ {
		if d := h.pace.Pause(ctx); d > 0 {
			if sleep(ctx, h.jitter(d, op, key, -i-1)) != nil {
				return reply{status: 0, err: ctx.Err()}, unsure
			}
		}
		if h.dead.Load() {
			return refusal(op), unsure
		}
		if unsure && recheck != nil {
			if r, done := recheck(ctx); done {
				return r, unsure
			}
		}
		actx, cancel := context.WithTimeout(ctx, h.policy.Timeout)
		kind, _, _ := strings.Cut(cond, ":")
		r := &request{h: h, op: op, key: key, cond: cond, kind: kind, exec: exec, out: make(chan reply, 1)}
		if write {
			r.expires = expiry(actx)
		}
		h.b.submit(r)
		select {
		case rep = <-r.out:
		case <-actx.Done():
			rep = reply{status: 0, err: errStatus(0)}
		}
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded)
		cancel()
		if timedOut && write {
			h.expectLate(key, r.expires)
		}
		h.adapt(rep.status)
		switch {
		case rep.expired:
			// Refused for arriving late: this attempt did not land.
		case rep.status == 200, rep.status == 404, rep.status == 412, rep.status == 403:
			return rep, unsure
		default:
			unsure = true
		}
		if rep.err == nil {
			rep.err = errStatus(rep.status)
		}
		if ctx.Err() != nil || i+1 >= h.policy.Attempts {
			return rep, unsure
		}
		backoff := h.jitter(min(h.policy.MaxDelay, h.policy.BaseDelay<<min(i, 20)), op, key, i)
		if timedOut && write {
			backoff = max(backoff, time.Until(r.expires))
		}
		if sleep(ctx, backoff) != nil {
			return rep, unsure
		}
	}
}

// noteUnknown remembers, for the UnknownAsNotLanded mutation, a write whose
// outcome the process could not learn.
func (h *Handle) noteUnknown(op, key string, rep reply, unsure bool) {
	if (op == "PUT" || op == "DELETE" || op == "COPY") && unsure && rep.status != 200 {
		h.mu.Lock()
		h.unknown[key] = true
		h.mu.Unlock()
	}
}

// notLanded is the UnknownAsNotLanded mutation: the next read of a key whose
// write's outcome was unknown is answered "not there" without asking the
// store — the process takes "unknown" for "did not land" (a lease write for
// not ours, a delete for not done).
func (h *Handle) notLanded(op, key string) (reply, bool) {
	if op != "GET" && op != "HEAD" {
		return reply{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.unknown[key] {
		return reply{}, false
	}
	delete(h.unknown, key)
	return reply{status: 404, err: fmt.Errorf("%w (mutation: unknown read as not landed)", store.ErrNotFound), desc: "404 (mutation)"}, true
}

// expiry is when the store stops accepting a write attempt whose context is
// ctx, as store.Store presigns it: the attempt's deadline, but never under a
// second away (X-Amz-Expires is whole seconds).
func expiry(ctx context.Context) time.Time {
	dl, _ := ctx.Deadline()
	if soonest := time.Now().Add(time.Second); dl.Before(soonest) {
		return soonest
	}
	return dl
}

// expectLate records that a write of key may land until t (store.Store's
// lateWrites).
func (h *Handle) expectLate(key string, t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.After(h.late[key]) {
		h.late[key] = t
	}
}

func (h *Handle) lateUntil(key string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.late[key]
}

// jitter is store.Store's full jitter, drawn from the request's identity
// rather than a shared source, so it does not depend on goroutine order.
func (h *Handle) jitter(d time.Duration, op, key string, i int) time.Duration {
	f := fnv.New64a()
	fmt.Fprintf(f, "%d/%s/%s/%s/%d", h.seed, h.name, op, key, i)
	return time.Duration(f.Sum64()%uint64(d)) + 1
}

func (h *Handle) adapt(status int) {
	switch status {
	case 503:
		h.pace.SlowedDown(h.policy.MaxDelay)
	case 200:
		h.pace.Succeeded()
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// answer turns a store result into a reply.
func answer(err error, res any, desc string) reply {
	switch {
	case err == nil:
		return reply{status: 200, res: res, desc: desc}
	case errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPrecondition):
		return reply{status: 404, err: err, res: res, desc: "404"}
	case errors.Is(err, store.ErrPrecondition):
		return reply{status: 412, err: err, res: res, desc: "412"}
	case errors.Is(err, store.ErrTooLarge):
		return reply{status: 200, err: err, res: res, desc: "too large"}
	}
	return reply{status: 500, err: err, desc: err.Error()}
}

type listed struct {
	page     store.Page
	versions []int64
	more     bool
}

// List calls fn with each page of the keys under prefix, one request a page.
func (h *Handle) List(ctx context.Context, prefix string, fn func(store.Page) error) error {
	after := ""
	for {
		rep, _ := h.call(ctx, "LIST", prefix, after, func() reply {
			page, vers, more := h.b.store.ListPage(prefix, after)
			return answer(nil, listed{page, vers, more}, fmt.Sprintf("%d keys", len(page.Objects)))
		})
		if rep.status != 200 {
			return fmt.Errorf("sim: list %s: %w", prefix, rep.err)
		}
		l := rep.res.(listed)
		for i, o := range l.page.Objects {
			h.saw(o.Key, l.versions[i])
		}
		if err := fn(l.page); err != nil {
			return err
		}
		if !l.more || len(l.page.Objects) == 0 {
			return nil
		}
		after = l.page.Objects[len(l.page.Objects)-1].Key
	}
}

// Dirs lists the "directories" directly under prefix.
func (h *Handle) Dirs(ctx context.Context, prefix string) ([]string, error) {
	rep, _ := h.call(ctx, "DIRS", prefix, "", func() reply {
		d, err := h.b.store.Dirs(context.Background(), prefix)
		return answer(err, d, fmt.Sprintf("%d dirs", len(d)))
	})
	if rep.status != 200 {
		return nil, fmt.Errorf("sim: list dirs %s: %w", prefix, rep.err)
	}
	return rep.res.([]string), nil
}

type versioned struct {
	obj store.Object
	ver int64
}

// Get reads an object whole (see store.Store.Get).
func (h *Handle) Get(ctx context.Context, key string, limit int64) (store.Object, error) {
	rep, _ := h.call(ctx, "GET", key, "", func() reply {
		o, v, err := h.b.store.GetVersion(key, limit)
		return answer(err, versioned{o, v}, fmtVer(v)+" "+short(o.ETag))
	})
	if rep.status != 200 {
		return store.Object{}, fmt.Errorf("sim: get %s: %w", key, rep.err)
	}
	vo := rep.res.(versioned)
	h.saw(key, vo.ver)
	if rep.err != nil { // too large
		return vo.obj, fmt.Errorf("sim: get %s: %w", key, rep.err)
	}
	if h.mut.SkipConfirm && h.role == "node" {
		h.mu.Lock()
		h.lastRead[key] = vo.obj
		h.mu.Unlock()
	}
	return vo.obj, nil
}

// Head describes an object.
func (h *Handle) Head(ctx context.Context, key string) (store.Object, error) {
	if h.mut.SkipConfirm && h.role == "node" {
		// The mutation: the claim's confirm answered from the node's own
		// read instead of the store, once.
		h.mu.Lock()
		o, ok := h.lastRead[key]
		delete(h.lastRead, key)
		h.mu.Unlock()
		if ok {
			return o, nil
		}
	}
	rep, _ := h.call(ctx, "HEAD", key, "", func() reply {
		o, v, err := h.b.store.HeadVersion(key)
		return answer(err, versioned{o, v}, fmtVer(v)+" "+short(o.ETag))
	})
	if rep.status != 200 {
		return store.Object{}, fmt.Errorf("sim: head %s: %w", key, rep.err)
	}
	vo := rep.res.(versioned)
	h.saw(key, vo.ver)
	return vo.obj, nil
}

type written struct {
	etag string
	ver  int64
}

// Put writes body to key (see store.Store.Put for the errors).
func (h *Handle) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	cond := ""
	switch {
	case opt.IfAbsent:
		cond = "If-None-Match:*"
	case opt.IfMatch != "":
		cond = "If-Match:" + short(opt.IfMatch)
	}
	req := h.reqs.Add(1)
	rep, unsure := h.call(ctx, "PUT", key, cond, func() reply {
		etag, v, err := h.b.store.PutVersion(key, body, opt)
		if err == nil {
			h.saw(key, v) // a write of its own: it knows what it holds
			h.b.hist.wrote(h, req, key, v, body, opt.Metadata)
		}
		return answer(err, written{etag, v}, fmtVer(v)+" "+short(etag))
	})
	if rep.status == 200 {
		if opt.IfMatch != "" && h.pruneDue(key) {
			_ = store.PruneReplaced(ctx, h, key) // as store.Store: best effort
		}
		return rep.res.(written).etag, nil
	}
	err := rep.err
	// As store.Store: after an attempt that may have landed, anything but a
	// definite 404 (a 412 included: it may answer our own write) is unknown.
	if unsure && (rep.status != 404 && rep.status != 403 || ctx.Err() != nil) {
		if h.mut.UnknownAsNotLanded {
			// The mutation: an outcome the store could not learn is taken
			// for a definite "no".
			if rep.status == 412 {
				return "", fmt.Errorf("sim: put %s: %w", key, err)
			}
			return "", fmt.Errorf("sim: put %s: not landed: %w", key, errStatus(rep.status))
		}
		err = fmt.Errorf("%w: %w", store.ErrUnknown, err)
	}
	return "", fmt.Errorf("sim: put %s: %w", key, err)
}

// Copy copies src to dst within the bucket (see store.Store.Copy).
func (h *Handle) Copy(ctx context.Context, src, dst string, opt store.CopyOptions) error {
	cond := ""
	if opt.SourceIfMatch != "" {
		cond = "x-amz-copy-source-if-match:" + short(opt.SourceIfMatch)
	}
	req := h.reqs.Add(1)
	rep, _ := h.call(ctx, "COPY", dst, "from "+src+" "+cond, func() reply {
		v, err := h.b.store.CopyVersion(src, dst, opt)
		if err == nil {
			h.saw(dst, v)
			o, _, _ := h.b.store.GetVersion(dst, 1<<40)
			h.b.hist.wrote(h, req, dst, v, o.Body, opt.Metadata)
		}
		return answer(err, nil, fmtVer(v))
	})
	if rep.status != 200 {
		return fmt.Errorf("sim: copy %s to %s: %w", src, dst, rep.err)
	}
	return nil
}

// Delete removes key if its ETag is ifMatch (see store.Store.Delete).
func (h *Handle) Delete(ctx context.Context, key, ifMatch string) error {
	return h.DeleteWritten(ctx, key, store.Version{ETag: ifMatch})
}

// DeleteWritten deletes version v of key, as store.Store.DeleteWritten: with
// If-Match, after an attempt that may have landed it first reads the key;
// on a versioned store, by version ids (store.DeleteByVersions).
func (h *Handle) DeleteWritten(ctx context.Context, key string, v store.Version) error {
	if h.mut.StripDeleteIfMatch {
		v = store.Version{}
	}
	if h.versionedDeletes {
		h.mu.Lock()
		delete(h.replaced, key)
		h.mu.Unlock()
		return store.DeleteByVersions(ctx, h, key, v)
	}
	ifMatch, modified := v.ETag, v.Modified
	cond := ""
	if ifMatch != "" {
		cond = "If-Match:" + short(ifMatch)
	}
	var recheck func(ctx context.Context) (reply, bool)
	if !modified.IsZero() {
		recheck = func(ctx context.Context) (reply, bool) {
			o, err := h.Head(ctx, key)
			switch {
			case errors.Is(err, store.ErrNotFound):
				return reply{status: 200, desc: "gone"}, true
			case err == nil && o.ETag == ifMatch && !o.LastModified.Equal(modified):
				return reply{status: 200, desc: "a newer version"}, true
			}
			return reply{}, false
		}
	}
	rep, unsure := h.callChecked(ctx, "DELETE", key, cond, func() reply {
		v, err := h.b.store.DeleteVersion(key, ifMatch)
		if err == nil && v != 0 {
			h.b.hist.deleted(h, key, v)
			return answer(nil, nil, "deleted "+fmtVer(v))
		}
		return answer(err, nil, "gone")
	}, recheck)
	switch {
	case rep.status == 200, rep.status == 404:
		return nil
	case rep.status == 412:
		return fmt.Errorf("sim: delete %s: %w", key, rep.err)
	case (unsure || rep.status != 403) && !h.mut.UnknownAsNotLanded:
		return fmt.Errorf("sim: delete %s: %w: %w", key, store.ErrUnknown, rep.err)
	}
	return fmt.Errorf("sim: delete %s: %w", key, rep.err)
}

// Versions lists key's versions, the current one first (see
// store.Store.Versions). A listing of versions is not a read of the current
// one: a process that deletes it must have seen it otherwise.
func (h *Handle) Versions(ctx context.Context, key string) ([]store.ObjectVersion, error) {
	rep, _ := h.call(ctx, "LISTV", key, "", func() reply {
		vs, err := h.b.store.Versions(context.Background(), key)
		return answer(err, vs, fmt.Sprintf("%d versions", len(vs)))
	})
	if rep.status != 200 {
		return nil, fmt.Errorf("sim: list versions %s: %w", key, rep.err)
	}
	return rep.res.([]store.ObjectVersion), nil
}

// DeleteVersions removes versions ids of key, one request (see
// store.Store.DeleteVersions). Every attempt is idempotent.
func (h *Handle) DeleteVersions(ctx context.Context, key string, ids []string) error {
	rep, unsure := h.call(ctx, "DELETE", key, "versions "+strings.Join(ids, ","), func() reply {
		var gone []string
		for _, id := range ids {
			v, current := h.b.store.DeleteVersionID(key, id)
			if v == 0 {
				continue
			}
			gone = append(gone, fmtVer(v))
			if current {
				// Only removing the current version changes what the
				// bucket holds; the blind-delete check applies to it.
				h.b.hist.deleted(h, key, v)
			}
		}
		return answer(nil, nil, "deleted "+strings.Join(gone, ","))
	})
	switch {
	case rep.status == 200, rep.status == 404:
		return nil
	case unsure || rep.status != 403:
		return fmt.Errorf("sim: delete %s versions %v: %w: %w", key, ids, store.ErrUnknown, rep.err)
	}
	return fmt.Errorf("sim: delete %s versions %v: %w", key, ids, rep.err)
}

// pruneEvery is store.PruneEvery made short: a scenario's leases see a
// dozen renewals, and a prune is safe at any rate, so every other replacing
// write prunes, to meet every other step as often as it can.
const pruneEvery = 2

// pruneDue counts a replacing write of key on a versioned store and reports
// whether its replaced versions are due to be pruned.
func (h *Handle) pruneDue(key string) bool {
	if !h.versionedDeletes {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.replaced[key]++
	if h.replaced[key] < pruneEvery {
		return false
	}
	delete(h.replaced, key)
	return true
}
