package main

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/time/rate"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/store"
)

// The S3 client is built here for the agent and the queue tools alike, from
// the same settings, so a tool sees the bucket the way the daemon does.

// newS3Client builds the S3 client; each request attempt's status (0: no
// answer) is also told to every function in attempts.
func newS3Client(cfg config.Config, getenv func(string) string, m *metrics.Metrics, attempts ...func(status int)) (*s3.Client, error) {
	ctx := context.Background()
	opts := []func(*awsconfig.LoadOptions) error{
		// The store bounds and retries every request itself, so that it knows
		// when a write's outcome is unknown; the SDK must not retry.
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(cfg.S3Timeout + time.Second)),
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if getenv("AWS_REGION") == "" && getenv("AWS_DEFAULT_REGION") == "" {
		opts = append(opts, awsconfig.WithRegion("us-east-1"))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS config: %w", err)
	}
	var limiter *rate.Limiter
	if cfg.S3RPS > 0 {
		limiter = rate.NewLimiter(rate.Limit(cfg.S3RPS), cfg.S3Burst)
	}
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		// Checksums only where S3 requires them: S3-compatible stores differ.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
		if limiter != nil {
			o.APIOptions = append(o.APIOptions, store.RateLimit(limiter, m.RateLimitWaited))
		}
		o.APIOptions = append(o.APIOptions, store.Observe(func(operation string, status int, d time.Duration) {
			m.S3Request(operation, status, d)
			for _, f := range attempts {
				f(status)
			}
		}))
	}), nil
}

// redactURL drops any user:password from an endpoint URL before it is logged.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

// s3Policy is the store's retry policy from the settings.
func s3Policy(cfg config.Config, m *metrics.Metrics) store.Policy {
	return store.Policy{Attempts: cfg.S3Attempts, Timeout: cfg.S3Timeout, SlowDown: m.SlowDown}
}
