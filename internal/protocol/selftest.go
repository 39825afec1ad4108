package protocol

import (
	"context"
	"errors"
	"fmt"

	"github.com/cellos/fleetd/internal/queue"
)

// ErrUnfit wraps a self-test failure that no retry will change: the store
// refused us (credentials, bucket, permissions) or ignores a condition the
// protocol depends on. fleetd must not run against it.
var ErrUnfit = errors.New("store unfit for the claim protocol")

// SelfTest checks, on a scratch key under the queue, that the bucket answers
// with our credentials and that the store honours If-None-Match: * and
// If-Match on PUT and If-Match on DELETE. It makes 7 requests and removes the
// scratch key. An error wrapping ErrUnfit is definite; any other error (no
// answer, an unknown outcome) may pass on a later try.
func (p *Protocol) SelfTest(ctx context.Context) (err error) {
	key := p.cfg.Layout.Key("selftest", p.cfg.Node+"-"+newToken())
	defer func() {
		if err != nil && !errors.Is(err, ErrUnfit) {
			_ = p.store.Delete(ctx, key, "") // best effort; a later try uses a new key
		}
	}()
	unfit := func(what string, err error) error {
		if err == nil {
			return fmt.Errorf("%w: %s", ErrUnfit, what)
		}
		if queue.Refused(err) {
			return fmt.Errorf("%w: %w", ErrUnfit, err)
		}
		return err // no definite answer: try again later
	}
	put := func(body string, opt queue.PutOptions) (string, error) {
		return p.store.Put(ctx, key, []byte(body), opt)
	}
	etag1, err := put(`{"selftest":1}`, queue.PutOptions{IfAbsent: true})
	if err != nil {
		return unfit("", err)
	}
	_, err = put(`{"selftest":2}`, queue.PutOptions{IfAbsent: true})
	if !isDefinitePrecondition(err) {
		return unfit("PUT with If-None-Match: * replaced an existing object", err)
	}
	_, err = put(`{"selftest":3}`, queue.PutOptions{IfMatch: `"00000000000000000000000000000000"`})
	if !isDefinitePrecondition(err) {
		return unfit("PUT with If-Match on a wrong ETag replaced the object", err)
	}
	etag2, err := put(`{"selftest":4}`, queue.PutOptions{IfMatch: etag1})
	if err != nil {
		return unfit("", err)
	}
	err = p.store.Delete(ctx, key, etag1)
	if !isDefinitePrecondition(err) {
		if err == nil {
			return unfit("DELETE with If-Match on a stale ETag deleted the object", nil)
		}
		return unfit("", err)
	}
	if err := p.store.Delete(ctx, key, etag2); err != nil {
		return unfit("", err)
	}
	if _, err := p.store.Head(ctx, key); !errors.Is(err, queue.ErrNotFound) {
		return unfit("DELETE with If-Match on the current ETag left the object", err)
	}
	return nil
}

func isDefinitePrecondition(err error) bool {
	return errors.Is(err, queue.ErrPrecondition) && !errors.Is(err, queue.ErrUnknown)
}
