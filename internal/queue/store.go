package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmw "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/time/rate"
)

// Errors the store maps S3 answers to. Callers test them with errors.Is.
var (
	// ErrNotFound: the key does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrPrecondition: a conditional write lost (412): the key exists for
	// If-None-Match, or its ETag changed for If-Match.
	ErrPrecondition = errors.New("precondition failed")
	// ErrTooLarge: the object is larger than the limit given to Get.
	ErrTooLarge = errors.New("object too large")
	// ErrNoSuchBucket: the bucket does not exist. Not ErrNotFound: a key is
	// not "gone" when its bucket is.
	ErrNoSuchBucket = errors.New("no such bucket")
	// ErrAccessDenied: the store refused the credentials or the request (403).
	ErrAccessDenied = errors.New("access denied")
)

// conflictRetries bounds retries of a conditional PUT answered 409
// ConditionalRequestConflict (a concurrent write on the same key).
const conflictRetries = 5

// Object is what the store knows of one object.
type Object struct {
	Key          string
	ETag         string
	Size         int64
	LastModified time.Time
	Metadata     map[string]string
	Body         []byte
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

// Store is one bucket of an S3-compatible object store.
type Store struct {
	client *s3.Client
	bucket string
}

// New returns a store for bucket through client.
func New(client *s3.Client, bucket string) *Store {
	return &Store{client: client, bucket: bucket}
}

// List calls fn with each page of the keys under prefix, in key order, one
// ListObjectsV2 request per page; it never holds more than one page. It stops at
// the first error, fn's included.
func (s *Store) List(ctx context.Context, prefix string, fn func(Page) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: &s.bucket,
		Prefix: &prefix,
	})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
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
	}
	return nil
}

// Get reads an object whole. An object over limit bytes is not read: the error
// wraps ErrTooLarge and the returned Object has everything but the body.
func (s *Store) Get(ctx context.Context, key string, limit int64) (Object, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return Object{}, fmt.Errorf("s3: get %s: %w", key, mapError(err))
	}
	defer out.Body.Close()
	o := Object{
		Key:          key,
		ETag:         aws.ToString(out.ETag),
		Size:         aws.ToInt64(out.ContentLength),
		LastModified: aws.ToTime(out.LastModified),
		Metadata:     out.Metadata,
		ServerTime:   serverTime(out.ResultMetadata),
	}
	if o.Size > limit {
		return o, fmt.Errorf("s3: get %s: %d bytes, limit %d: %w", key, o.Size, limit, ErrTooLarge)
	}
	// Read one byte past the limit in case the length header was absent or wrong.
	body, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
	if err != nil {
		return Object{}, fmt.Errorf("s3: get %s: read body: %w", key, err)
	}
	if int64(len(body)) > limit {
		o.Size = int64(len(body))
		return o, fmt.Errorf("s3: get %s: over %d bytes: %w", key, limit, ErrTooLarge)
	}
	o.Body = body
	return o, nil
}

// Head describes an object without reading it.
func (s *Store) Head(ctx context.Context, key string) (Object, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
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
	}, nil
}

// Put writes body to key and returns the new ETag. A failed condition wraps
// ErrPrecondition, including If-Match on a key that no longer exists (S3
// answers that 404); a 409 conflict with a concurrent write is retried.
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
	var err error
	for range conflictRetries {
		in.Body = bytes.NewReader(body)
		var out *s3.PutObjectOutput
		out, err = s.client.PutObject(ctx, in)
		if err == nil {
			return aws.ToString(out.ETag), nil
		}
		if httpStatus(err) != http.StatusConflict {
			break
		}
	}
	err = mapError(err)
	if opt.IfMatch != "" && errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: key gone: %w", ErrPrecondition, err)
	}
	return "", fmt.Errorf("s3: put %s: %w", key, err)
}

// Copy copies src to dst within the bucket, replacing its metadata.
func (s *Store) Copy(ctx context.Context, src, dst string, metadata map[string]string) error {
	_, err := s.client.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket:            &s.bucket,
		Key:               &dst,
		CopySource:        aws.String(s.bucket + "/" + src),
		Metadata:          metadata,
		MetadataDirective: "REPLACE",
	})
	if err != nil {
		return fmt.Errorf("s3: copy %s to %s: %w", src, dst, mapError(err))
	}
	return nil
}

// Delete removes key. Deleting a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && !errors.Is(mapError(err), ErrNotFound) {
		return fmt.Errorf("s3: delete %s: %w", key, mapError(err))
	}
	return nil
}

// mapError turns the S3 answers the protocol branches on into sentinels and
// leaves every other error as it is.
func mapError(err error) error {
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%w (%s)", ErrNotFound, api.ErrorCode())
		case "PreconditionFailed":
			return fmt.Errorf("%w (%s)", ErrPrecondition, api.ErrorCode())
		case "NoSuchBucket":
			return fmt.Errorf("%w: %w", ErrNoSuchBucket, err)
		}
	}
	switch httpStatus(err) {
	case http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case http.StatusPreconditionFailed:
		return fmt.Errorf("%w: %w", ErrPrecondition, err)
	}
	return err
}

func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
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
