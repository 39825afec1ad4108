package protocol

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cellos/fleetd/internal/store"
)

// ErrUnfit wraps a self-test failure that no retry will change: the store
// refused us (credentials, bucket, permissions) or ignores a condition the
// protocol depends on. fleetd must not run against it.
var ErrUnfit = errors.New("store unfit for the claim protocol")

// racers is how many create-only PUTs of one key the self-test races.
const racers = 8

// SelfTest checks, on scratch keys under the queue, that the bucket answers
// with our credentials and that the store honours what the protocol relies
// on, and returns the delete mode to use (docs/PROTOCOL.md, "Stores"):
//   - If-None-Match: * on PUT, atomically: of 8 concurrent create-only PUTs
//     of one fresh key exactly one wins (a store that checks the condition
//     but not atomically is refused);
//   - If-Match on PUT;
//   - If-Match on DELETE: store.IfMatchDeletes. A store that ignores it
//     (MinIO) is used with store.VersionedDeletes if the bucket keeps
//     versions and DELETE with a version id removes exactly that version;
//     otherwise it is unfit, and the error says how to fix it.
//
// It makes about 20 requests (about 28 on a versioned bucket) and removes
// what it wrote. An error wrapping ErrUnfit is definite; any other error (no
// answer, an unknown outcome) may pass on a later try.
func (p *Protocol) SelfTest(ctx context.Context) (mode store.DeleteMode, err error) {
	key := p.cfg.Layout.Key("selftest", p.cfg.Node+"-"+newToken())
	race := key + ".race"
	defer func() {
		// Best effort: a later try uses new keys.
		for _, k := range []string{key, race} {
			if mode == store.VersionedDeletes || err != nil {
				p.removeVersions(ctx, k)
			} else {
				_ = p.store.Delete(ctx, k, "")
			}
		}
	}()
	if err := p.raceCreates(ctx, race); err != nil {
		return "", err
	}
	put := func(body string, opt store.PutOptions) (string, error) {
		return p.store.Put(ctx, key, []byte(body), opt)
	}
	etag1, err := put(`{"selftest":1}`, store.PutOptions{IfAbsent: true})
	if err != nil {
		return "", unfit("", err)
	}
	_, err = put(`{"selftest":2}`, store.PutOptions{IfAbsent: true})
	if !isDefinitePrecondition(err) {
		return "", unfit("PUT with If-None-Match: * replaced an existing object", err)
	}
	_, err = put(`{"selftest":3}`, store.PutOptions{IfMatch: `"00000000000000000000000000000000"`})
	if !isDefinitePrecondition(err) {
		return "", unfit("PUT with If-Match on a wrong ETag replaced the object", err)
	}
	etag2, err := put(`{"selftest":4}`, store.PutOptions{IfMatch: etag1})
	if err != nil {
		return "", unfit("", err)
	}
	err = p.store.Delete(ctx, key, etag1)
	switch {
	case isDefinitePrecondition(err):
		if err := p.store.Delete(ctx, key, etag2); err != nil {
			return "", unfit("", err)
		}
		if _, err := p.store.Head(ctx, key); !errors.Is(err, store.ErrNotFound) {
			return "", unfit("DELETE with If-Match on the current ETag left the object", err)
		}
		return store.IfMatchDeletes, nil
	case err != nil:
		return "", unfit("", err)
	}
	// The stale delete went through: the store ignores If-Match on DELETE.
	return p.probeVersions(ctx, key)
}

// raceCreates races create-only PUTs of key: exactly one must win, every
// other must lose definitely.
func (p *Protocol) raceCreates(ctx context.Context, key string) error {
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			_, errs[i] = p.store.Put(ctx, key, fmt.Appendf(nil, `{"selftest_racer":%d}`, i), store.PutOptions{IfAbsent: true})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !isDefinitePrecondition(err):
			return unfit("", err)
		}
	}
	if won != 1 {
		return unfit(fmt.Sprintf("%d of %d concurrent PUTs with If-None-Match: * of one new key succeeded, not 1: the store checks the condition but not atomically", won, racers), nil)
	}
	return nil
}

// probeVersions decides whether a store that ignores If-Match on DELETE can
// run in store.VersionedDeletes: key had two versions written and a DELETE
// since. The bucket must have kept them, each with an id of its own, and a
// versioned delete must remove exactly the version it names.
func (p *Protocol) probeVersions(ctx context.Context, key string) (store.DeleteMode, error) {
	const fix = "DELETE ignores If-Match and the bucket keeps no versions: enable versioning on the bucket " +
		"(MinIO: `mc version enable ALIAS/BUCKET`; S3 API: PutBucketVersioning Status=Enabled)"
	vs, err := p.store.Versions(ctx, key)
	if err != nil {
		return "", unfit("", err)
	}
	ids := map[string]bool{}
	for _, v := range vs {
		if !v.Marker && v.ID != "" && v.ID != "null" {
			ids[v.ID] = true
		}
	}
	if len(ids) < 2 {
		return "", fmt.Errorf("%w: %s", ErrUnfit, fix)
	}
	etag1, err := p.store.Put(ctx, key, []byte(`{"selftest":5}`), store.PutOptions{IfAbsent: true})
	if err != nil {
		return "", unfit("", err)
	}
	etag2, err := p.store.Put(ctx, key, []byte(`{"selftest":6}`), store.PutOptions{IfMatch: etag1})
	if err != nil {
		return "", unfit("", err)
	}
	err = store.DeleteByVersions(ctx, p.store, key, store.Version{ETag: etag1})
	if !isDefinitePrecondition(err) {
		return "", unfit("a versioned delete of a replaced version was not refused", err)
	}
	if err := store.DeleteByVersions(ctx, p.store, key, store.Version{ETag: etag2}); err != nil {
		return "", unfit("", err)
	}
	if o, err := p.store.Head(ctx, key); !errors.Is(err, store.ErrNotFound) {
		// The version under it came back, or the delete was ignored.
		return "", unfit(fmt.Sprintf("DELETE by version id left the key holding ETag %s", o.ETag), err)
	}
	return store.VersionedDeletes, nil
}

// removeVersions deletes every version of a scratch key, best effort.
func (p *Protocol) removeVersions(ctx context.Context, key string) {
	vs, err := p.store.Versions(ctx, key)
	if err != nil || len(vs) == 0 {
		return
	}
	ids := make([]string, len(vs))
	for i, v := range vs {
		ids[i] = v.ID
	}
	_ = p.store.DeleteVersions(ctx, key, ids)
}

// unfit is the self-test's verdict on err: ErrUnfit with what when the store
// answered definitely (err nil: what it did wrong; a refusal: err itself),
// else err, to be tried again.
func unfit(what string, err error) error {
	if err == nil {
		return fmt.Errorf("%w: %s", ErrUnfit, what)
	}
	if store.Refused(err) {
		return fmt.Errorf("%w: %w", ErrUnfit, err)
	}
	return err // no definite answer: try again later
}

func isDefinitePrecondition(err error) bool {
	return errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrUnknown)
}
