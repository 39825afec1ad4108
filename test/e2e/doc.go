// Package e2e holds fleetd's binary-level tests: the real fleetd, built once
// by TestMain (with -race when the tests run with it), against a real S3
// server on 127.0.0.1 — versitygw, or MinIO with versioning on when
// FLEETD_TEST_STORE=minio — with the test supervisor as its cells, the fault
// proxy between them where a test needs one, and nats-server for bucket
// notifications.
//
// One file per behaviour (claim_faults_test.go, drain_test.go,
// hostile_ids_test.go, …); the harness (a bucket per test, agents, their
// logs and events) is harness_test.go, the fault-proxy helpers and the
// queue's invariant fault_proxy_test.go. Where versitygw (or MinIO,
// nats-server) is not installed the tests skip, unless CI is set: then they
// fail. The package has no code besides this comment.
package e2e
