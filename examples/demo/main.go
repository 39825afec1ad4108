// Command demo runs fleetd end to end on a local S3: it starts nats-server and
// versitygw (publishing bucket events to it) on free loopback ports, submits
// example specs, runs fleetd with concurrency 4 and notifications on, prints
// where each spec ended up, submits one more and times its pickup, then
// drains fleetd and stops the servers. `make demo` runs it; with --store
// minio (make demo STORE=minio) the store is MinIO with versioning on, and
// fleetd polls (the demo does not set up MinIO's event publishing).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellos/fleetd/internal/localstore"
	"github.com/cellos/fleetd/internal/natsserver"
	"github.com/cellos/fleetd/internal/versitygw"
)

const bucket = "fleetd-demo"

// specs are the example submissions: id → spec JSON.
var specs = []struct{ id, body string }{
	{"hello-1", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"hello-1"}}`},
	{"hello-2", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"hello-2"}}`},
	{"hello-3", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"hello-3","placement":{"poolId":"cpu"}}}`},
	{"hello-4", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"hello-4"}}`},
	{"hello-5", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"hello-5"}}`},
	{"fails-on-purpose", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"fails-on-purpose","fail":true}}`},
	{"not-json", `{"apiVersion": oops`},
	{"gpu-job", `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"gpu-job","placement":{"poolId":"gpu"}}}`},
}

func main() {
	fleetd := flag.String("fleetd", "bin/fleetd", "fleetd binary")
	supervisor := flag.String("supervisor", "examples/supervisor.sh", "supervisor to run cells with")
	store := flag.String("store", "versitygw", "local S3 server to run on: versitygw or minio")
	flag.Parse()
	if err := run(*fleetd, *supervisor, *store); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(fleetd, supervisor, store string) error {
	dir, err := os.MkdirTemp("", "fleetd-demo-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "s3")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	var srv *localstore.Server
	settings := []string{"CELLOS_FLEET_POLL_INTERVAL_MS=500"}
	pickupBy := "the poll"
	if store == "versitygw" {
		nbin, err := natsserver.Binary()
		if err != nil {
			return err
		}
		ns, err := natsserver.Start(nbin, filepath.Join(dir, "nats"))
		if err != nil {
			return err
		}
		defer ns.Stop()
		fmt.Printf("==> nats-server %s on %s\n", natsserver.Version, ns.URL)
		const subject = "s3.events.fleetd-demo"
		bin, err := versitygw.Binary()
		if err != nil {
			return err
		}
		vgw, err := versitygw.StartWith(bin, data, versitygw.Options{NATSURL: ns.URL, NATSSubject: subject})
		if err != nil {
			return err
		}
		srv = localstore.FromVersitygw(vgw)
		fmt.Printf("==> versitygw %s serving %s on %s, publishing bucket events to %s\n", srv.Version, data, srv.URL, subject)
		settings = []string{"CELLOS_FLEET_NOTIFY_URL=" + ns.URL, "CELLOS_FLEET_NOTIFY_SUBJECT=" + subject}
		pickupBy = "its bucket event (the next poll was a minute away)"
	} else {
		if srv, err = localstore.Start(store, data); err != nil {
			return err
		}
		fmt.Printf("==> %s %s serving %s on %s\n", srv.Kind, srv.Version, data, srv.URL)
	}
	defer srv.Stop()

	ctx := context.Background()
	client := srv.Client()
	if err := srv.CreateBucket(ctx, client, bucket); err != nil {
		return err
	}
	for _, s := range specs {
		key := "fleet/pending/" + s.id + ".json"
		if _, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: &key, Body: strings.NewReader(s.body)}); err != nil {
			return fmt.Errorf("submit %s: %w", s.id, err)
		}
		fmt.Printf("==> submitted s3://%s/%s\n", bucket, key)
	}

	sup, err := filepath.Abs(supervisor)
	if err != nil {
		return err
	}
	cmd := exec.Command(fleetd)
	cmd.Env = append(os.Environ(), srv.Env()...)
	cmd.Env = append(cmd.Env,
		"CELLOS_FLEET_BUCKET="+bucket,
		"CELLOS_FLEET_SUPERVISOR="+sup,
		"CELLOS_FLEET_CONCURRENCY=4",
		"CELLOS_FLEET_POOL_ID=cpu",
		"CELLOS_FLEET_LOG_FORMAT=text",
	)
	cmd.Env = append(cmd.Env, settings...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Printf("==> starting fleetd: concurrency 4, pool cpu, %s\n", map[bool]string{true: "notifications on (safety-net poll 60 s)", false: "polling every 500 ms"}[store == "versitygw"])
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fleetd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()

	// Every spec but the gpu one ends in completed/ or failed/.
	want := len(specs) - 1
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := count(ctx, client, "fleet/completed/") + count(ctx, client, "fleet/failed/")
		if done >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d specs finished within 60s", done, want)
		}
		time.Sleep(200 * time.Millisecond)
	}

	fmt.Println("==> where each spec ended up")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPEC\tSTATE\tREASON")
	for _, s := range specs {
		state, reason := where(ctx, client, s.id)
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.id, state, reason)
	}
	tw.Flush()

	// With notifications the safety-net poll is a minute away: a pickup
	// within it is the bucket event's doing.
	late := `{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"late-arrival"}}`
	lateKey := "fleet/pending/late-arrival.json"
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: &lateKey, Body: strings.NewReader(late)}); err != nil {
		return fmt.Errorf("submit late-arrival: %w", err)
	}
	sent := time.Now()
	fmt.Printf("==> submitted s3://%s/%s to the running fleetd\n", bucket, lateKey)
	var claimed time.Duration
	for {
		state, _ := where(ctx, client, "late-arrival")
		if state != "pending" && claimed == 0 {
			claimed = time.Since(sent) // pending/ is deleted once the claim holds
		}
		if state == "completed" {
			break
		}
		if time.Since(sent) > 90*time.Second {
			return fmt.Errorf("late-arrival not completed within 90s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	fmt.Printf("==> late-arrival claimed %v after its PUT, by %s; completed after %v\n",
		claimed.Round(time.Millisecond), pickupBy, time.Since(sent).Round(time.Millisecond))

	fmt.Println("==> SIGTERM: fleetd drains and exits")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	fmt.Printf("==> fleetd exited 0; stopping %s\n", srv.Kind)
	return nil
}

func count(ctx context.Context, c *s3.Client, prefix string) int {
	out, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: &prefix})
	if err != nil {
		return 0
	}
	return len(out.Contents)
}

func where(ctx context.Context, c *s3.Client, id string) (state, reason string) {
	for _, st := range []string{"completed", "failed", "pending", "claimed"} {
		out, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("fleet/" + st + "/" + id + ".json")})
		if err == nil {
			reason = out.Metadata["fleetd-reason"]
			if st == "pending" {
				reason = "left for a runner of its pool (gpu)"
			}
			return st, reason
		}
	}
	return "missing", ""
}
