// Package localstore starts a local S3 server of either kind fleetd is
// tested on — versitygw (honours If-Match on DELETE) or MinIO (does not;
// fleetd uses it with versioning on) — for the tests, the demo and the
// benchmarks, and makes buckets on it the way fleetd needs them there.
package localstore

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/cellos/fleetd/internal/minio"
	"github.com/cellos/fleetd/internal/versitygw"
)

// Kinds are the stores Start knows, the default first.
var Kinds = []string{"versitygw", "minio"}

// Server is a running local store.
type Server struct {
	Kind      string // versitygw or minio
	Version   string
	URL       string // http://127.0.0.1:<port>
	AccessKey string
	SecretKey string
	Dir       string // the store's data directory
	// Env points the AWS SDK and CLI at the server.
	Env  func() []string
	Stop func()
	Pid  func() int
}

// Start starts a store of kind serving dir (a private directory). The
// caller must Stop it.
func Start(kind, dir string) (*Server, error) {
	bin, err := Binary(kind)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "versitygw":
		s, err := versitygw.Start(bin, dir)
		if err != nil {
			return nil, err
		}
		return FromVersitygw(s), nil
	case "minio":
		s, err := minio.Start(bin, dir)
		if err != nil {
			return nil, err
		}
		return &Server{kind, minio.Version, s.URL, s.AccessKey, s.SecretKey, s.Dir, s.Env, s.Stop, s.Pid}, nil
	}
	return nil, fmt.Errorf("unknown store %q: want one of %v", kind, Kinds)
}

// Binary finds the server binary of kind (toolbin.Find: a missing one is
// toolbin.ErrNotFound).
func Binary(kind string) (string, error) {
	switch kind {
	case "versitygw":
		return versitygw.Binary()
	case "minio":
		return minio.Binary()
	}
	return "", fmt.Errorf("unknown store %q: want one of %v", kind, Kinds)
}

// FromVersitygw is a versitygw the caller started (with options Start does
// not give, such as publishing events).
func FromVersitygw(s *versitygw.Server) *Server {
	return &Server{"versitygw", versitygw.Version, s.URL, s.AccessKey, s.SecretKey, s.Dir, s.Env, s.Stop, s.Pid}
}

// Client returns an S3 client of the server's root user; opts adjust it.
func (s *Server) Client(opts ...func(*s3.Options)) *s3.Client {
	return s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.URL),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	}, opts...)
}

// CreateBucket makes a bucket fleetd can run on: on MinIO, with versioning
// enabled, without which fleetd refuses it (see docs/PROTOCOL.md, "Stores").
func (s *Server) CreateBucket(ctx context.Context, client *s3.Client, name string) error {
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	if s.Kind != "minio" {
		return nil
	}
	_, err := client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: &name,
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled}})
	if err != nil {
		return fmt.Errorf("enable versioning on %s: %w", name, err)
	}
	return nil
}
