package e2e

// Input that can never run: specs filed in failed/ with a reason, stray keys
// left alone, submitted attempt counts clamped (issue 9).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestUnrunnableSpecsFailAndStrayKeysAreLeftAlone: specs that can never run go
// to failed/ with a reason and the agent keeps going; keys that are not work
// are left alone and logged once.
// Was TestBadInput.
func TestUnrunnableSpecsFailAndStrayKeysAreLeftAlone(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	big := append([]byte(`{"spec":{"id":"big","pad":"`), bytes.Repeat([]byte("x"), 300)...)
	big = append(big, `"}}`...)
	b.putRaw(b.key("pending", "big"), big)
	b.putRaw(b.key("pending", "not-json"), []byte(`{"spec":`))
	b.putRaw(b.key("pending", "array"), []byte(`[1,2,3]`))
	b.putRaw("fleet/pending/readme.txt", []byte("hello"))
	b.putRaw("fleet/pending/nested/x.json", []byte(`{"spec":{}}`))
	b.submit("good", map[string]any{})

	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_MAX_SPEC_BYTES": "256"})
	b.waitCount("failed", 3)
	b.waitCount("completed", 1)
	// Let several polls pass to show the junk keys are logged only once.
	awaitPolls(t, a, 3)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	wantReason := map[string]string{
		"big":      fmt.Sprintf("spec is %d bytes, over the limit of 256", len(big)),
		"not-json": "invalid spec: not JSON",
		"array":    "invalid spec: not a JSON object",
	}
	for id, want := range wantReason {
		body, meta := b.get(b.key("failed", id))
		if !strings.HasPrefix(meta["fleetd-reason"], want) || meta["fleetd-outcome"] != "rejected" {
			t.Errorf("failed/%s metadata = %v, want reason %q", id, meta, want)
		}
		if len(body) == 0 {
			t.Errorf("failed/%s.json lost its bytes", id)
		}
	}
	if got := starts(a.cellEvents()); len(got) != 1 || got["good"] != 1 {
		t.Errorf("cells started = %v, want only good", got)
	}
	for _, key := range []string{"fleet/pending/readme.txt", "fleet/pending/nested/x.json"} {
		if !b.exists(key) {
			t.Errorf("%s was touched", key)
		}
		if n := len(a.logs.eventsWith("lister.not_work", "key", key)); n != 1 {
			t.Errorf("%s logged %d times, want once", key, n)
		}
	}
}

// TestSubmittedAttemptsClamped: a submitter's fleetd-attempts metadata can
// neither deny a spec its run nor give it more than the maximum: each spec
// runs once, and its record counts at least 1 and at most the maximum runs.
func TestSubmittedAttemptsClamped(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	want := map[string]string{"neg": "1", "huge": "3", "junk": "1", "max": "3"}
	for id, attempts := range map[string]string{"neg": "-5", "huge": "999999", "junk": "many", "max": "3"} {
		body, _ := json.Marshal(map[string]any{"spec": map[string]any{"id": id}})
		_, err := env.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: aws.String(b.key("pending", id)),
			Body: bytes.NewReader(body), Metadata: map[string]string{"fleetd-attempts": attempts}})
		if err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_MAX_ATTEMPTS": "3"})
	b.waitCount("completed", len(want))
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	runs := starts(a.cellEvents())
	for id, n := range want {
		if runs[id] != 1 {
			t.Errorf("spec %s ran %d times, want once", id, runs[id])
		}
		if _, meta := b.get(b.key("completed", id)); meta["fleetd-attempts"] != n || meta["fleetd-outcome"] != "completed" {
			t.Errorf("completed/%s metadata = %v, want fleetd-attempts %s", id, meta, n)
		}
	}
}
