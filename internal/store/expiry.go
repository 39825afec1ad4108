package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmw "github.com/aws/aws-sdk-go-v2/aws/middleware"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// A write that reaches the store after its sender gave up on it (held by a
// proxy, stuck on a slow path) lands unseen: after the store's own retry has
// succeeded, it can delete an identical resubmission (same bytes, same ETag).
// So every write attempt is signed in the query string (SigV4 presigned) with
// an expiry no later than the attempt's deadline by the store's clock: the
// store refuses it with 403 "Request has expired" if it arrives later, and
// the next attempt carries a signature of its own. See docs/PROTOCOL.md,
// "Requests that cannot land late".

// ErrExpired: the store refused a write because it arrived after the
// attempt's deadline (403 "Request has expired"). That attempt did not land;
// an earlier one may have (ErrUnknown says so).
var ErrExpired = errors.New("request expired before it reached the store")

// clockDrift is how fast the store's clock may run against the local
// monotonic clock: 100 ppm, above what a disciplined clock drifts and below
// NTP's 500 ppm slew. A bound learnt t ago is widened by clockDrift × t.
const clockDrift = 1e-4

// lastAcceptKey is the context key under which do gives each attempt a
// *time.Time: presign sets it to the local time after which the store refuses
// the attempt.
type lastAcceptKey struct{}

// unsignedPayload is the payload hash of a presigned request.
const unsignedPayload = "UNSIGNED-PAYLOAD"

// minFlight is the least time a write is given to reach the store after it is
// sent, on the store's clock at its latest.
const minFlight = 250 * time.Millisecond

// maxExpires is the longest X-Amz-Expires SigV4 accepts: a week.
const maxExpires = 7 * 24 * 60 * 60

// serverClock bounds the store's clock from the Date of its answers. An answer
// sent at local time s and received at r with Date d was stamped by the store
// at a moment in [s, r] whose true time was in [d, d+1s): so at any later
// local time t the store's clock reads at least d + (t − r) and less than
// d + 1 s + (t − s). The bounds of many answers are intersected: from 1 s
// wide they narrow toward a round trip as answers come at different points
// of the store's second. Local times are monotonic readings: a step of
// the local wall clock changes nothing.
type serverClock struct {
	mu    sync.Mutex
	known bool
	epoch time.Time // local; bounds are kept as store time at epoch
	lo    time.Time // the store's clock at epoch is at least lo...
	loAt  time.Time // (learnt at loAt, widened by drift since)
	hi    time.Time // ...and less than hi
	hiAt  time.Time
}

// observe narrows the bounds with an answer sent at send, received at recv,
// dated date (whole seconds).
func (c *serverClock) observe(send, recv, date time.Time) {
	if date.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		c.epoch = send
	}
	lo := date.Add(-recv.Sub(c.epoch))
	hi := date.Add(time.Second - send.Sub(c.epoch))
	curLo, curHi := c.boundsLocked(recv)
	// An answer outside the bounds means the store's clock was stepped (or
	// drifted beyond clockDrift): start again from this answer.
	if !c.known || lo.After(curHi) || hi.Before(curLo) {
		c.known, c.lo, c.loAt, c.hi, c.hiAt = true, lo, recv, hi, recv
		return
	}
	if lo.After(curLo) {
		c.lo, c.loAt = lo, recv
	}
	if hi.Before(curHi) {
		c.hi, c.hiAt = hi, recv
	}
}

// boundsLocked returns the bounds at epoch as they stand at local time t,
// widened for drift since each was learnt.
func (c *serverClock) boundsLocked(t time.Time) (lo, hi time.Time) {
	widen := func(since time.Time) time.Duration {
		return time.Duration(clockDrift * float64(max(0, t.Sub(since))))
	}
	return c.lo.Add(-widen(c.loAt)), c.hi.Add(widen(c.hiAt))
}

// earliest returns the lowest the store's clock can read at local time t.
func (c *serverClock) earliestLocked(t time.Time) time.Time {
	lo, _ := c.boundsLocked(t)
	return lo.Add(t.Sub(c.epoch))
}

// expiry returns the X-Amz-Date and X-Amz-Expires of an attempt signed at
// local time now that should not be accepted after local time deadline, and
// last, the local time after which the store refuses it for certain. Both are
// whole seconds of the store's clock, from its lower bound: the store's clock
// reads at least earliest(t) at local t. date + expires is rounded down, so
// last is at or before deadline — unless that leaves under a second, then
// the attempt still gets minFlight after the send at the store's latest, and last
// may be up to two seconds after deadline. known is false
// until the store's clock has been learnt.
func (c *serverClock) expiry(now, deadline time.Time) (date time.Time, expires int, last time.Time, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		return time.Time{}, 0, time.Time{}, false
	}
	// Never in the store's future: AWS refuses presigned dates ahead of it.
	date = c.earliestLocked(now).Truncate(time.Second)
	end := c.earliestLocked(deadline)
	expires = min(max(1, int(end.Sub(date)/time.Second)), maxExpires)
	// Never already past when it arrives: the store's clock may read up to
	// its upper bound now, and date was rounded down from the lower one, so a
	// short deadline could leave an expiry the store has passed (every lease
	// renewal at a 3 s ttl refused, the cell fenced). The attempt gets at
	// least minFlight of the store's time after the send.
	_, hi := c.boundsLocked(now)
	if latest := hi.Add(now.Sub(c.epoch)).Add(minFlight); date.Add(time.Duration(expires) * time.Second).Before(latest) {
		expires = int((latest.Sub(date) + time.Second - 1) / time.Second)
	}
	last = deadline.Add(date.Add(time.Duration(expires) * time.Second).Sub(end))
	return date, expires, last, true
}

// expiring returns the per-request option the store adds to every request:
// it learns the store's clock from each answer, and, when write is set,
// re-signs the attempt in the query string with an expiry at the attempt's
// deadline. It runs last in the Finalize step, after rate limiting, so the
// signature is as fresh as it can be.
func (s *Store) expiring(write bool) func(*s3.Options) {
	return func(o *s3.Options) {
		creds, region := o.Credentials, o.Region
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("fleetdExpiry",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					if write && !s.noExpiry && creds != nil {
						if err := s.presign(ctx, in, creds, region); err != nil {
							return middleware.FinalizeOutput{}, middleware.Metadata{}, err
						}
					}
					send := time.Now()
					out, md, err := next.HandleFinalize(ctx, in)
					s.clock.observe(send, time.Now(), responseDate(md, err))
					return out, md, err
				}), middleware.After)
		})
	}
}

// presign replaces the SDK's header signature of the attempt in with a query
// signature that expires at the attempt's deadline. Until the store's clock
// is known (its first answer) the header signature stays.
func (s *Store) presign(ctx context.Context, in middleware.FinalizeInput, creds aws.CredentialsProvider, region string) error {
	req, ok := in.Request.(*smithyhttp.Request)
	deadline, hasDeadline := ctx.Deadline()
	if !ok || !hasDeadline {
		return nil
	}
	date, expires, last, known := s.clock.expiry(time.Now(), deadline)
	if !known {
		return nil
	}
	if l, ok := ctx.Value(lastAcceptKey{}).(*time.Time); ok {
		*l = last
	}
	cred, err := creds.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("retrieve credentials: %w", err)
	}
	for _, h := range []string{"Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256"} {
		req.Header.Del(h)
	}
	if req.URL.RawQuery != "" {
		req.URL.RawQuery += "&"
	}
	req.URL.RawQuery += "X-Amz-Expires=" + strconv.Itoa(expires)
	// Every header is signed, conditions included (If-Match, If-None-Match,
	// x-amz-copy-source-if-match): none may be hoisted into the query, where
	// a store could read it differently. The payload is not signed (presigned
	// requests cannot sign it); TLS protects it in transit.
	signed, _, err := s.signer.PresignHTTP(ctx, cred, req.Request, unsignedPayload, "s3", region, date,
		func(o *v4.SignerOptions) {
			o.DisableHeaderHoisting = true
			o.DisableURIPathEscaping = true // S3 signs the path as sent, escaped once
		})
	if err != nil {
		return fmt.Errorf("presign: %w", err)
	}
	u, err := url.Parse(signed)
	if err != nil {
		return fmt.Errorf("presign: %w", err)
	}
	req.URL.RawQuery = u.RawQuery
	return nil
}

// responseDate reads the Date of the answer to an attempt, error answers
// included; zero if there was none.
func responseDate(md middleware.Metadata, err error) time.Time {
	var h http.Header
	if resp, ok := awsmw.GetRawResponse(md).(*smithyhttp.Response); ok {
		h = resp.Header
	} else if re := (*smithyhttp.ResponseError)(nil); errors.As(err, &re) && re.Response != nil {
		h = re.Response.Header
	}
	if h == nil {
		return time.Time{}
	}
	t, perr := http.ParseTime(h.Get("Date"))
	if perr != nil {
		return time.Time{}
	}
	return t
}

// isExpired tells a refusal for expiry from other 403s. S3 and versitygw
// answer AccessDenied for both and tell them apart only by the message, so
// that is what is matched; nothing else in the answer distinguishes them.
func isExpired(err error) bool {
	if errors.Is(err, ErrExpired) {
		return true
	}
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "AccessDenied" &&
		strings.HasPrefix(api.ErrorMessage(), "Request has expired")
}

// lateWrites remembers, per key, until when a write attempt of ours that
// timed out may still land: under a second past its deadline, and only when
// it had under a second left (expiry). A later request on the key waits until
// then, so a read-back that resolves an unknown outcome, or the caller's
// repeat, comes after it. Entries live under a second, so the map stays small.
type lateWrites struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// expect records that a write of key may land until t.
func (l *lateWrites) expect(key string, t time.Time) {
	now := time.Now()
	if !t.After(now) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]time.Time)
	}
	for k, u := range l.m {
		if !u.After(now) {
			delete(l.m, k)
		}
	}
	if t.After(l.m[key]) {
		l.m[key] = t
	}
}

// until returns until when a write of key may still land; zero if none may.
func (l *lateWrites) until(key string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[key]
}
