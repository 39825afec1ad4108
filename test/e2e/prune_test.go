package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestPruneDeletesOldResultsInBatches deletes a few thousand old results in
// batches and keeps the new.
// Was TestPrune.
func TestPruneDeletesOldResultsInBatches(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	putMany := func(state, prefix string, n int) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				key := b.key(state, fmt.Sprintf("%s-%04d", prefix, i))
				if _, err := env.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: strings.NewReader(`{"spec":{}}`)}); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	putMany("completed", "old", 2500)
	putMany("failed", "old", 300)
	// Age is what prune judges, on the server's 1-second clock (an age is
	// known to ±1 s): let the old results grow well past the threshold, 8 s,
	// before the new ones are written; the new ones must stay younger than it
	// through both prune runs below, each listing 2,800 keys on a loaded machine.
	time.Sleep(10 * time.Second)
	putMany("completed", "new", 5)
	putMany("failed", "new", 5)

	if code, out, errOut := runCLI(t, b, "prune", "--older-than", "8s", "--dry-run"); code != 0 || !strings.Contains(out, "completed: 0 deleted of 2500 older; failed: 0 deleted of 300 older") {
		t.Fatalf("prune --dry-run = %d %q %q", code, out, errOut)
	}
	if n := len(b.ids("completed")); n != 2505 {
		t.Fatalf("a dry run deleted: completed/ holds %d", n)
	}
	if code, out, errOut := runCLI(t, b, "prune", "--older-than", "8s", "--state", "completed"); code != 0 || !strings.Contains(out, "completed: 2500 deleted of 2500 older") {
		t.Fatalf("prune --state completed = %d %q %q", code, out, errOut)
	}
	if got := b.ids("completed"); len(got) != 5 || !strings.HasPrefix(got[0], "new-") {
		t.Errorf("completed/ after prune = %d keys (%v…), want the 5 new ones", len(got), got[:min(3, len(got))])
	}
	if n := len(b.ids("failed")); n != 305 {
		t.Errorf("failed/ holds %d after pruning completed/ only, want 305", n)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"prune"}, "--older-than is required"},
		{[]string{"prune", "--older-than", "1d", "--state", "pending"}, "--state is completed or failed"},
	} {
		if code, _, errOut := runCLI(t, b, c.args...); code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v = %d %q, want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}
