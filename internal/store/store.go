package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmw "github.com/aws/aws-sdk-go-v2/aws/middleware"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/time/rate"
)

// Errors the store maps S3 answers to. Callers test them with errors.Is.
var (
	// ErrNotFound: the key does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrPrecondition: a conditional request lost (412): the key exists for
	// If-None-Match, or its ETag is not the one given in If-Match.
	ErrPrecondition = errors.New("precondition failed")
	// ErrTooLarge: the object is larger than the limit given to Get.
	ErrTooLarge = errors.New("object too large")
	// ErrUnknown: a write may or may not have landed. An attempt failed without
	// a definite answer (no response, timeout, 5xx) and no later attempt told
	// us; a 412 after such an attempt may be the answer to our own write. The
	// caller resolves it by reading the object back.
	ErrUnknown = errors.New("outcome unknown")
	// ErrNoSuchBucket: the bucket does not exist. Not ErrNotFound: a key is
	// not "gone" when its bucket is.
	ErrNoSuchBucket = errors.New("no such bucket")
	// ErrAccessDenied: the store refused the credentials or the request (403).
	ErrAccessDenied = errors.New("access denied")
)

// Policy is how the store retries. Every request attempt is bounded by
// Timeout; failed attempts that may succeed if repeated (no response, timeout,
// 5xx, 429, 409 conflict) are retried up to Attempts in all, after a backoff
// with full jitter between BaseDelay and MaxDelay. There is no retry quota: a
// long outage never turns retries off.
type Policy struct {
	Attempts  int
	Timeout   time.Duration
	BaseDelay time.Duration
	MaxDelay  time.Duration
	// SlowDown, if set, is told each time S3 asks this agent to slow down
	// (503 SlowDown or 429).
	SlowDown func()
}

// DefaultPolicy is used for the zero fields of a Policy.
var DefaultPolicy = Policy{Attempts: 5, Timeout: 10 * time.Second, BaseDelay: 100 * time.Millisecond, MaxDelay: 5 * time.Second}

// Object is what the store knows of one object.
type Object struct {
	Key          string
	ETag         string
	Size         int64
	LastModified time.Time
	Metadata     map[string]string
	Body         []byte
	// VersionID is the store's id of this version, on a versioned bucket
	// (GET and HEAD only; LIST does not say).
	VersionID string
	// ServerTime is the Date of the response that described the object: the
	// server's clock, for judging age without trusting the local one.
	ServerTime time.Time
}

// Page is one page of a listing.
type Page struct {
	Objects    []Object
	ServerTime time.Time
}

// PutOptions makes a PUT conditional and attaches user metadata.
type PutOptions struct {
	// IfAbsent: create only if the key does not exist (If-None-Match: *).
	IfAbsent bool
	// IfMatch: replace only if the current ETag equals it.
	IfMatch  string
	Metadata map[string]string
}

// Store is one bucket of an S3-compatible object store. The SDK client it is
// given must not retry (aws.NopRetryer): the store retries itself, so it knows
// when an outcome is unknown.
type Store struct {
	client *s3.Client
	bucket string
	policy Policy
	// pace is the pause before each attempt: the agent backs off as a whole.
	pace Pace
	// clock bounds the store's clock, for the expiry of each write attempt.
	clock  serverClock
	signer *v4.Signer
	// late holds, per key, until when a write attempt of ours that timed out
	// may still land.
	late lateWrites
	// noExpiry signs writes the SDK's way, with no expiry: tests show with it
	// what the expiry prevents.
	noExpiry bool
	// versioned: conditional deletes name versions (VersionedDeletes).
	versioned atomic.Bool
	// unversioned: the last write got no version id (ErrVersioningOff).
	unversioned atomic.Bool
	replaced    replacements
}

// New returns a store for bucket through client; zero fields of policy take
// DefaultPolicy's values.
func New(client *s3.Client, bucket string, policy Policy) *Store {
	if policy.Attempts <= 0 {
		policy.Attempts = DefaultPolicy.Attempts
	}
	if policy.Timeout <= 0 {
		policy.Timeout = DefaultPolicy.Timeout
	}
	if policy.BaseDelay <= 0 {
		policy.BaseDelay = DefaultPolicy.BaseDelay
	}
	if policy.MaxDelay <= 0 {
		policy.MaxDelay = DefaultPolicy.MaxDelay
	}
	return &Store{client: client, bucket: bucket, policy: policy, signer: v4.NewSigner()}
}

// attempt is the outcome of one try of a request.
type attempt int

const (
	done      attempt = iota // success, or a definite answer: stop
	retry                    // definitely not applied: try again
	ambiguous                // may have been applied: try again, remember it
)

// do runs fn until it succeeds, gives a definite answer, or runs out of
// attempts; each attempt gets its own timeout. It returns whether any failed
// attempt may have been applied by the server, and fn's last error. key, if
// not "", is the object fn reads or writes: do first waits until no write of
// ours to it that timed out can still land (expiry.go), so what it reads or
// writes comes after that write or never.
func (s *Store) do(ctx context.Context, key string, fn func(ctx context.Context) error) (unsure bool, err error) {
	if d := time.Until(s.late.until(key)); key != "" && d > 0 {
		if err := sleep(ctx, d); err != nil {
			return false, fmt.Errorf("wait for a write of ours that may still land: %w", err)
		}
	}
	for i := 0; ; i++ {
		if d := s.pace.Pause(ctx); d > 0 {
			if werr := sleep(ctx, rand.N(d)+1); werr != nil {
				return unsure, errors.Join(err, werr)
			}
		}
		actx, cancel := context.WithTimeout(ctx, s.policy.Timeout)
		var last time.Time // set by presign (expiry.go) for a write
		err = fn(context.WithValue(actx, lastAcceptKey{}, &last))
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded)
		cancel()
		if timedOut && key != "" {
			s.late.expect(key, last) // for the caller's next request on key
		}
		kind := classify(err)
		s.adapt(err)
		if kind == done {
			return unsure, err
		}
		if kind == ambiguous {
			unsure = true
		}
		if ctx.Err() != nil || i+1 >= s.policy.Attempts {
			return unsure, err
		}
		backoff := rand.N(min(s.policy.MaxDelay, s.policy.BaseDelay<<min(i, 20))) + 1
		if timedOut {
			// An attempt given up on may still be on its way: the next is not
			// sent until the store would refuse this one (under a second
			// past its deadline, and only when it had under a second left).
			backoff = max(backoff, time.Until(last))
		}
		if werr := sleep(ctx, backoff); werr != nil {
			return unsure, err
		}
	}
}

// adapt raises the agent-wide pause on SlowDown and lowers it on success.
func (s *Store) adapt(err error) {
	if status := httpStatus(err); status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		if s.policy.SlowDown != nil {
			s.policy.SlowDown()
		}
		s.pace.SlowedDown(s.policy.MaxDelay)
		return
	}
	if err == nil {
		s.pace.Succeeded()
	}
}

// Pace is how a client of the store backs off as a whole when S3 says
// SlowDown: a pause before each attempt, raised by every SlowDown (doubled,
// from 50 ms, up to a maximum) and halved by every success. The zero Pace
// pauses nothing.
type Pace struct{ ns atomic.Int64 }

// SlowedDown raises the pause after a SlowDown (503 or 429), up to limit.
func (p *Pace) SlowedDown(limit time.Duration) {
	cur := time.Duration(p.ns.Load())
	p.ns.Store(int64(min(limit, max(2*cur, 50*time.Millisecond))))
}

// Succeeded halves the pause (to none below a millisecond).
func (p *Pace) Succeeded() {
	if cur := p.ns.Load(); cur > 0 {
		if cur < int64(time.Millisecond) {
			cur = 0
		}
		p.ns.Store(cur / 2)
	}
}

// Pause is the pause before the next attempt: at most a quarter of what ctx
// has left, so that a lease renewal still gets its turn; 0 for none.
func (p *Pace) Pause(ctx context.Context) time.Duration {
	d := time.Duration(p.ns.Load())
	if d <= 0 {
		return 0
	}
	if dl, ok := ctx.Deadline(); ok {
		d = max(1, min(d, time.Until(dl)/4))
	}
	return d
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

// List calls fn with each page of the keys under prefix, in key order, one
// ListObjectsV2 request per page; it never holds more than one page. It stops at
// the first error, fn's included.
func (s *Store) List(ctx context.Context, prefix string, fn func(Page) error) error {
	in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix}
	for {
		var out *s3.ListObjectsV2Output
		_, err := s.do(ctx, "", func(ctx context.Context) (err error) {
			out, err = s.client.ListObjectsV2(ctx, in, s.expiring(false))
			return err
		})
		if err != nil {
			return fmt.Errorf("s3: list %s: %w", prefix, mapError(err))
		}
		page := Page{Objects: make([]Object, 0, len(out.Contents)), ServerTime: serverTime(out.ResultMetadata)}
		for _, o := range out.Contents {
			page.Objects = append(page.Objects, Object{
				Key:          aws.ToString(o.Key),
				ETag:         aws.ToString(o.ETag),
				Size:         aws.ToInt64(o.Size),
				LastModified: aws.ToTime(o.LastModified),
			})
		}
		if err := fn(page); err != nil {
			return err
		}
		if !aws.ToBool(out.IsTruncated) || aws.ToString(out.NextContinuationToken) == "" {
			return nil
		}
		in.ContinuationToken = out.NextContinuationToken
	}
}

// Dirs returns the "directories" directly under prefix (which ends in "/"):
// the distinct next path segments, each ending in "/".
func (s *Store) Dirs(ctx context.Context, prefix string) ([]string, error) {
	in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, Delimiter: aws.String("/")}
	var dirs []string
	for {
		var out *s3.ListObjectsV2Output
		_, err := s.do(ctx, "", func(ctx context.Context) (err error) {
			out, err = s.client.ListObjectsV2(ctx, in, s.expiring(false))
			return err
		})
		if err != nil {
			return dirs, fmt.Errorf("s3: list dirs %s: %w", prefix, mapError(err))
		}
		for _, p := range out.CommonPrefixes {
			dirs = append(dirs, aws.ToString(p.Prefix))
		}
		if !aws.ToBool(out.IsTruncated) || aws.ToString(out.NextContinuationToken) == "" {
			return dirs, nil
		}
		in.ContinuationToken = out.NextContinuationToken
	}
}

// Get reads an object whole. An object over limit bytes is not read: the error
// wraps ErrTooLarge and the returned Object has everything but the body.
func (s *Store) Get(ctx context.Context, key string, limit int64) (Object, error) {
	var o Object
	_, err := s.do(ctx, key, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key}, s.expiring(false))
		if err != nil {
			return err
		}
		defer out.Body.Close()
		o = Object{
			Key:          key,
			ETag:         aws.ToString(out.ETag),
			Size:         aws.ToInt64(out.ContentLength),
			LastModified: aws.ToTime(out.LastModified),
			Metadata:     out.Metadata,
			ServerTime:   serverTime(out.ResultMetadata),
			VersionID:    aws.ToString(out.VersionId),
		}
		if o.Size > limit {
			return nil
		}
		// Read one byte past the limit in case the length header was absent or wrong.
		body, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		if int64(len(body)) > limit {
			o.Size = int64(len(body))
			return nil
		}
		o.Body = body
		return nil
	})
	if err != nil {
		return Object{}, fmt.Errorf("s3: get %s: %w", key, mapError(err))
	}
	if o.Body == nil && o.Size > 0 || o.Size > limit {
		return o, fmt.Errorf("s3: get %s: %d bytes, limit %d: %w", key, o.Size, limit, ErrTooLarge)
	}
	if o.Body == nil {
		o.Body = []byte{}
	}
	return o, nil
}

// Head describes an object without reading it.
func (s *Store) Head(ctx context.Context, key string) (Object, error) {
	var out *s3.HeadObjectOutput
	_, err := s.do(ctx, key, func(ctx context.Context) (err error) {
		out, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key}, s.expiring(false))
		return err
	})
	if err != nil {
		return Object{}, fmt.Errorf("s3: head %s: %w", key, mapError(err))
	}
	return Object{
		Key:          key,
		ETag:         aws.ToString(out.ETag),
		Size:         aws.ToInt64(out.ContentLength),
		LastModified: aws.ToTime(out.LastModified),
		Metadata:     out.Metadata,
		ServerTime:   serverTime(out.ResultMetadata),
		VersionID:    aws.ToString(out.VersionId),
	}, nil
}

// Put writes body to key and returns the new ETag. A failed condition wraps
// ErrPrecondition, including If-Match on a key that no longer exists (S3
// answers that 404). When an attempt may have landed and no later attempt
// settled it, the error wraps ErrUnknown (and, if the last answer was 412,
// ErrPrecondition too: callers check ErrUnknown first).
func (s *Store) Put(ctx context.Context, key string, body []byte, opt PutOptions) (string, error) {
	in := &s3.PutObjectInput{
		Bucket:      &s.bucket,
		Key:         &key,
		ContentType: aws.String("application/json"),
		Metadata:    opt.Metadata,
	}
	if opt.IfAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	if opt.IfMatch != "" {
		in.IfMatch = aws.String(opt.IfMatch)
	}
	// A presigned attempt (expiry.go) cannot sign its body; the signed
	// Content-MD5 makes the store refuse bytes changed on the way.
	sum := md5.Sum(body)
	in.ContentMD5 = aws.String(base64.StdEncoding.EncodeToString(sum[:]))
	var etag, versionID string
	unsure, err := s.do(ctx, key, func(ctx context.Context) error {
		in.Body = bytes.NewReader(body)
		out, err := s.client.PutObject(ctx, in, s.expiring(!isLease(key)))
		if err == nil {
			etag, versionID = aws.ToString(out.ETag), aws.ToString(out.VersionId)
		}
		return err
	})
	if err == nil {
		s.wrote(ctx, key, versionID, opt.IfMatch != "")
		return etag, nil
	}
	err = mapError(err)
	if opt.IfMatch != "" && errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: key gone: %w", ErrPrecondition, err)
	}
	if unsure && (classify(err) != done || errors.Is(err, ErrPrecondition) || ctx.Err() != nil) {
		err = fmt.Errorf("%w: %w", ErrUnknown, err)
	}
	return "", fmt.Errorf("s3: put %s: %w", key, err)
}

// CopyOptions makes a COPY conditional on the source and sets the metadata
// of the copy.
type CopyOptions struct {
	// SourceIfMatch: copy only if the source's ETag equals it.
	SourceIfMatch string
	Metadata      map[string]string
}

// Copy copies src to dst within the bucket, replacing its metadata. A source
// that changed or is gone wraps ErrPrecondition or ErrNotFound.
func (s *Store) Copy(ctx context.Context, src, dst string, opt CopyOptions) error {
	in := &s3.CopyObjectInput{
		Bucket:            &s.bucket,
		Key:               &dst,
		CopySource:        aws.String(copySource(s.bucket, src)),
		Metadata:          opt.Metadata,
		MetadataDirective: "REPLACE",
	}
	if opt.SourceIfMatch != "" {
		in.CopySourceIfMatch = aws.String(opt.SourceIfMatch)
	}
	// An unconditional write of the same bytes: repeating it is harmless.
	var versionID string
	_, err := s.do(ctx, dst, func(ctx context.Context) error {
		out, err := s.client.CopyObject(ctx, in, s.expiring(true))
		if err == nil {
			versionID = aws.ToString(out.VersionId)
		}
		return err
	})
	if err == nil {
		s.wrote(ctx, dst, versionID, false)
	}
	if err != nil {
		return fmt.Errorf("s3: copy %s to %s: %w", src, dst, mapError(err))
	}
	return nil
}

// copySource is the x-amz-copy-source value: bucket/key, URL-encoded, as S3
// requires (a key with %, +, a newline or an encoded slash would otherwise
// name another object). Every byte but the unreserved ones and "/" is
// escaped: url.PathEscape keeps "+", which S3 and versitygw read as a space.
func copySource(bucket, key string) string {
	var b strings.Builder
	for _, c := range []byte(bucket + "/" + key) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~', c == '/':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Delete removes key if its ETag is ifMatch (any version when ifMatch is "").
// A key already gone is not an error: S3 answers 404, some stores 204. Another
// version under the key wraps ErrPrecondition; a delete whose outcome could
// not be learnt wraps ErrUnknown.
func (s *Store) Delete(ctx context.Context, key, ifMatch string) error {
	return s.DeleteWritten(ctx, key, Version{ETag: ifMatch})
}

// DeleteWritten is Delete of version v. An ETag is the MD5 of the bytes, so
// If-Match cannot tell v from an identical version written since (a
// resubmission); the time, or the version id, can. With IfMatchDeletes an
// attempt that follows one which may have landed first reads the key: gone,
// or the same bytes written at another time, means the earlier attempt
// deleted ours — the newer version stays.
func (s *Store) DeleteWritten(ctx context.Context, key string, v Version) error {
	if s.versioned.Load() {
		if s.unversioned.Load() {
			return fmt.Errorf("s3: delete %s: %w: %w", key, ErrUnknown, ErrVersioningOff)
		}
		s.replaced.forget(key)
		return DeleteByVersions(ctx, s, key, v)
	}
	ifMatch, modified := v.ETag, v.Modified
	in := &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}
	if ifMatch != "" {
		in.IfMatch = aws.String(ifMatch)
	}
	mayHaveLanded := false
	unsure, err := s.do(ctx, key, func(ctx context.Context) error {
		if mayHaveLanded && !modified.IsZero() {
			out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key}, s.expiring(false))
			switch {
			case err != nil:
				return err // 404: gone, as deleted
			case aws.ToString(out.ETag) == ifMatch && !aws.ToTime(out.LastModified).Equal(modified):
				return nil // a newer version of the same bytes: ours went
			}
		}
		_, err := s.client.DeleteObject(ctx, in, s.expiring(true))
		mayHaveLanded = mayHaveLanded || classify(err) == ambiguous
		return err
	})
	if err == nil {
		return nil
	}
	err = mapError(err)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case errors.Is(err, ErrPrecondition):
		// Whether or not an earlier attempt of ours landed, the key now holds a
		// version that is not the one we meant to delete.
		return fmt.Errorf("s3: delete %s: %w", key, err)
	case unsure || classify(err) != done && !errors.Is(err, ErrExpired):
		return fmt.Errorf("s3: delete %s: %w: %w", key, ErrUnknown, err)
	}
	return fmt.Errorf("s3: delete %s: %w", key, err)
}

// serverTime reads the Date header of a response; zero if there is none.
func serverTime(md middleware.Metadata) time.Time {
	resp, ok := awsmw.GetRawResponse(md).(*smithyhttp.Response)
	if !ok {
		return time.Time{}
	}
	t, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}
	}
	return t
}

// RateLimit returns an SDK option that makes every S3 request attempt, retries
// included, wait for a token from l; waited (may be nil) is told each wait.
// Register it with s3.Options.APIOptions.
func RateLimit(l *rate.Limiter, waited func(time.Duration)) func(*middleware.Stack) error {
	return func(stack *middleware.Stack) error {
		return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("fleetdRateLimit",
			func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
				start := time.Now()
				if err := l.Wait(ctx); err != nil {
					return middleware.FinalizeOutput{}, middleware.Metadata{}, fmt.Errorf("rate limit: %w", err)
				}
				if waited != nil {
					waited(time.Since(start))
				}
				return next.HandleFinalize(ctx, in)
			}), middleware.After)
	}
}

// Observe returns an SDK option that tells observe about every S3 request
// attempt, retries included: the operation, the HTTP status (0 when no
// response came) and the time it took. Register it after RateLimit so the
// time excludes waiting for the limiter.
func Observe(observe func(operation string, status int, d time.Duration)) func(*middleware.Stack) error {
	return func(stack *middleware.Stack) error {
		return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("fleetdObserve",
			func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
				start := time.Now()
				out, md, err := next.HandleFinalize(ctx, in)
				status := 0
				if resp, ok := awsmw.GetRawResponse(md).(*smithyhttp.Response); ok {
					status = resp.StatusCode
				} else if s := httpStatus(err); s != 0 {
					status = s
				}
				observe(middleware.GetOperationName(ctx), status, time.Since(start))
				return out, md, err
			}), middleware.After)
	}
}

// isLease reports whether key is a lease or a session. Its write needs no expiry: every
// one carries a fresh nonce, so its If-Match names a version no later write
// has, and a late one is refused by its own condition; and a renewal, with
// under a second left at the shortest ttl, is the write an expiry rounded to
// whole seconds would refuse on arrival.
func isLease(key string) bool {
	return strings.Contains(key, "/"+string(Leases)+"/") || strings.Contains(key, "/"+string(Sessions)+"/")
}
