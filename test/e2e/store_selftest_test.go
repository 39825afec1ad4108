package e2e

// Stores (issue 20): the self-test picks the delete mode the store can
// serve, says which, and refuses a store that can serve neither; it refuses a
// broken store or a missing bucket at start-up.

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/cellos/fleetd/internal/faultproxy"
)

// TestSelfTestRefusesBrokenStoresAndRetriesASilentOne: a store that ignores
// If-None-Match and a missing bucket are refused with exit 2; no answer at all
// is retried until SIGTERM.
// From issue 8, the start-up self-test; was TestCaseSelfTest.
func TestSelfTestRefusesBrokenStoresAndRetriesASilentOne(t *testing.T) {
	t.Parallel()
	t.Run("ignored If-None-Match", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		p := startProxy(t)
		// The second create-only PUT "succeeds" without reaching the server.
		fake := p.Add(faultproxy.Rule{Method: "PUT", Key: regexp.MustCompile(`selftest/`), Header: map[string]string{"If-None-Match": "*"},
			Action: faultproxy.ErrorBefore, Status: 200, Skip: 1, Times: 1})
		a := startAgent(t, b, caseBVia(p, nil))
		if code := a.wait(); code != 2 {
			t.Errorf("exit code %d, want 2", code)
		}
		if fake.Fired() != 1 {
			t.Errorf("rule fired %d times, want 1", fake.Fired())
		}
		if n := len(selfTestFailures(a, "If-None-Match")); n == 0 {
			t.Error("no log line names If-None-Match")
		}
	})
	t.Run("no such bucket", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_BUCKET": b.name + "-missing"}))
		if code := a.wait(); code != 2 {
			t.Errorf("exit code %d, want 2", code)
		}
		if n := len(selfTestFailures(a, "NoSuchBucket")); n == 0 {
			t.Error("no log line names NoSuchBucket")
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		ln.Close()
		a := startAgent(t, b, fast(map[string]string{"AWS_ENDPOINT_URL_S3": dead, "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"}))
		addr := metricsAddr(t, a)
		a.logs.awaitEvent(t, "selftest.retry", 2) // retried, not given up
		if code, _ := httpGet(t, "http://"+addr+"/readyz"); code != 503 {
			t.Errorf("/readyz = %d, want 503", code)
		}
		caseBStop(t, a)
	})
}

// selfTestFailures are a's selftest.failed events whose err (the store's
// error text) names code.
func selfTestFailures(a *agent, code string) []map[string]any {
	var out []map[string]any
	for _, l := range a.logs.events("selftest.failed") {
		if e, _ := l["err"].(string); strings.Contains(e, code) {
			out = append(out, l)
		}
	}
	return out
}

// The mode the self-test chose is logged and exported, and a spec runs in it
// with nothing left behind: on a versioned bucket, no version of pending/ or
// of the lease survives the spec (each would be storage, or a spec or lease
// that comes back).
func TestStoreModeChosenBySelfTest(t *testing.T) {
	t.Parallel()
	want := map[string]string{"versitygw": "conditional", "minio": "versioned"}[env.store]
	b := newBucket(t)
	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"}))
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "selftest.passed", 1)
	if got := a.logs.events("selftest.passed")[0]["mode"]; got != want {
		t.Errorf("self-test chose mode %v on %s, want %s", got, env.store, want)
	}
	if v := sample(t, scrape(t, addr), "fleetd_store_info", "mode", want); v != 1 {
		t.Errorf("fleetd_store_info{mode=%q} = %v, want 1", want, v)
	}
	b.submit("s1", map[string]any{"exit": 0})
	b.waitCount("completed", 1)
	caseBStop(t, a)
	out, err := env.client.ListObjectVersions(context.Background(), &s3.ListObjectVersionsInput{Bucket: &b.name, Prefix: &b.base})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, v := range out.Versions {
		// The result and its output stay, and the recovery marker if the
		// agent's first recovery offer (at a random moment in its first
		// ttl) came before the stop: it is never deleted. Nothing else may.
		if k := *v.Key; !strings.Contains(k, "/completed/") && !strings.Contains(k, "/output/") && !strings.HasSuffix(k, "/recovery/scan.json") {
			left = append(left, k)
		}
	}
	for _, m := range out.DeleteMarkers {
		left = append(left, *m.Key+" (delete marker)")
	}
	if len(left) > 0 {
		t.Errorf("versions left behind besides the result and its output: %v", left)
	}
}

// MinIO without versioning ignores If-Match on DELETE and keeps nothing to
// delete by: fleetd refuses it at start-up, naming the fix.
func TestStorePlainMinIORefused(t *testing.T) {
	onlyOn(t, "minio", "the store that ignores If-Match on DELETE")
	t.Parallel()
	plain := fmt.Sprintf("it-%d-plain-%d", os.Getpid(), bucketSeq.Add(1))
	if _, err := env.client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &plain}); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, &bucket{t: t, name: plain, base: "fleet"}, fast(nil))
	if code := a.wait(); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if len(selfTestFailures(a, "mc version enable")) != 1 || len(selfTestFailures(a, "ignores If-Match")) != 1 {
		t.Errorf("no one line names what is missing and the fix; log:\n%s", a.logs.text())
	}
}

// A store that checks If-None-Match but not atomically lets two of the
// self-test's 8 concurrent create-only PUTs win: refused.
func TestStoreNonAtomicCreateRefused(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	// One racer's PUT "succeeds" without reaching the store, beside the one
	// that does.
	fake := p.Add(faultproxy.Rule{Method: "PUT", Key: regexp.MustCompile(`selftest/.*\.race$`), Header: map[string]string{"If-None-Match": "*"},
		Action: faultproxy.ErrorBefore, Status: 200, Times: 1})
	a := startAgent(t, b, caseBVia(p, nil))
	if code := a.wait(); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if fake.Fired() != 1 {
		t.Errorf("rule fired %d times, want 1", fake.Fired())
	}
	if n := len(selfTestFailures(a, "not atomically")); n != 1 {
		t.Errorf("%d self-test failures name the race, want 1; log:\n%s", n, a.logs.text())
	}
}
