package store

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// ErrNotImplemented: the store does not implement the request or one of its
// headers (501): a definite refusal, the same on every attempt.
var ErrNotImplemented = errors.New("not implemented by the store")

// answer is how the store reads one kind of S3 error answer, whichever
// store gave it.
type answer struct {
	status int
	code   string // "" matches any code with this status
	kind   attempt
	is     error // the sentinel callers test for; nil: none
}

// answers maps the error answers of the stores fleetd runs on (measured on
// versitygw and MinIO; AWS's from its documentation), first match wins.
// Success answers need no entry, but differ too: a DELETE of a missing key
// is 204 on versitygw, MinIO and AWS alike, 404 on some stores (Delete
// takes both for gone), and a DELETE of a missing version is 204 on MinIO.
var answers = []answer{
	// GET or HEAD of a missing key; PUT with If-Match of a missing key
	// (AWS, MinIO, versitygw: Put reports it as a lost condition).
	{http.StatusNotFound, "NoSuchKey", done, ErrNotFound},
	{http.StatusNotFound, "NotFound", done, ErrNotFound}, // HEAD: no body, the SDK's code
	{http.StatusNotFound, "NoSuchVersion", done, ErrNotFound},
	// Not ErrNotFound: a key is not "gone" when its bucket is.
	{http.StatusNotFound, "NoSuchBucket", done, ErrNoSuchBucket},
	{http.StatusNotFound, "", done, ErrNotFound},
	// A condition lost: If-None-Match on an existing key, If-Match on
	// another ETag, x-amz-copy-source-if-match.
	{http.StatusPreconditionFailed, "", done, ErrPrecondition},
	// AWS: another conditional write of the key was in flight; this one was
	// not applied. Any other 409 (OperationAborted) is not applied either.
	{http.StatusConflict, "ConditionalRequestConflict", retry, nil},
	{http.StatusConflict, "", retry, nil},
	// A store without conditional writes or versions (some S3-compatible
	// stores answer 501 NotImplemented to the header or request): definite.
	{http.StatusNotImplemented, "", done, ErrNotImplemented},
	// Credentials, policy, an expired request (isExpired tells those apart
	// first).
	{http.StatusForbidden, "", done, ErrAccessDenied},
	// Overload and server errors: the request may have been applied.
	{http.StatusTooManyRequests, "", ambiguous, nil},
	{http.StatusServiceUnavailable, "", ambiguous, nil}, // SlowDown
	{http.StatusInternalServerError, "", ambiguous, nil},
	{http.StatusBadGateway, "", ambiguous, nil},
	{http.StatusGatewayTimeout, "", ambiguous, nil},
}

// lookup returns the answer err is, if it is an S3 answer in the table.
func lookup(err error) (answer, bool) {
	status, code := httpStatus(err), ""
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
		if status == 0 && code == "NoSuchBucket" {
			status = http.StatusNotFound
		}
	}
	for _, a := range answers {
		if a.status == status && (a.code == "" || a.code == code) {
			return a, true
		}
	}
	return answer{}, false
}

// classify tells whether an attempt's error is final and whether a write
// could have been applied.
func classify(err error) attempt {
	if err == nil {
		return done
	}
	if isExpired(err) {
		return retry // refused on arrival, or never sent: not applied
	}
	if a, ok := lookup(err); ok {
		return a.kind
	}
	status := httpStatus(err)
	switch {
	case status >= 500:
		return ambiguous
	case status != 0:
		return done // a definite 4xx answer
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		return done // an error document without a status: definite
	}
	// No response: reset, refused, timed out. The request may have landed.
	return ambiguous
}

// mapError turns the S3 answers the protocol branches on into sentinels and
// leaves every other error as it is.
func mapError(err error) error {
	if isExpired(err) && !errors.Is(err, ErrExpired) {
		return fmt.Errorf("%w: %w", ErrExpired, err)
	}
	if a, ok := lookup(err); ok && a.is != nil && !errors.Is(err, a.is) {
		return fmt.Errorf("%w: %w", a.is, err)
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

// Refused reports whether S3 definitely refused a request with an answer no
// retry will change: a 4xx other than the ones the protocol branches on
// (access denied, no such bucket, bad signature, unknown access key), a 501,
// and other than an attempt refused for arriving after its expiry.
func Refused(err error) bool {
	if isExpired(err) {
		return false // this attempt was late; the next one may not be
	}
	status := httpStatus(err)
	return status >= 400 && status < 500 && status != http.StatusNotFound && status != http.StatusConflict &&
		status != http.StatusPreconditionFailed && status != http.StatusTooManyRequests && status != http.StatusRequestTimeout ||
		status == http.StatusNotImplemented || isCode(err, "NoSuchBucket")
}

func isCode(err error, code string) bool {
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == code
}
