// Command testsupervisor stands in for cellos-supervisor in fleetd's tests and
// benchmarks. It reads the spec file it is given and does what the spec's
// "test" object says, recording its start and end in $FLEETD_TEST_EVENTS as lines of
// "start|end <id> <unix-nanos> <pid> <spec-path> <spec-file-mode>".
//
//	{"spec": {"id": "a", "test": {"sleepMs": 100, "exit": 3, "waitFor": "/path",
//	          "barrier": {"dir": "/path", "n": 4}, "ignoreTerm": true,
//	          "print": "text for stdout", "printEnv": true,
//	          "bulk": {"bytes": 3145728, "secretEnv": "VAR", "secretAt": [0.5, 0.8]},
//	          "beat": {"dir": "/path", "everyMs": 20},
//	          "failRuns": {"dir": "/path", "n": 2}}}}
//
// bulk prints numbered 64-byte lines up to bytes, every 100th on stderr,
// and the value of $secretEnv inside the line at each fraction of secretAt.
// beat appends the time (unix nanos) to <dir>/<id>.<pid> every everyMs while
// the cell runs: the cell's own proof of when it made progress (a frozen
// cell writes none).
// failRuns makes the first n runs of the spec (counted in dir) exit 7 and
// every later one exit as "exit" says.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type behaviour struct {
	SleepMs    int    `json:"sleepMs"`
	Exit       int    `json:"exit"`
	WaitFor    string `json:"waitFor"`
	IgnoreTerm bool   `json:"ignoreTerm"`
	Print      string `json:"print"`
	PrintEnv   bool   `json:"printEnv"`
	Bulk       *struct {
		Bytes     int       `json:"bytes"`
		SecretEnv string    `json:"secretEnv"`
		SecretAt  []float64 `json:"secretAt"`
	} `json:"bulk"`
	Barrier *struct {
		Dir string `json:"dir"`
		N   int    `json:"n"`
	} `json:"barrier"`
	Beat *struct {
		Dir     string `json:"dir"`
		EveryMs int    `json:"everyMs"`
	} `json:"beat"`
	FailRuns *struct {
		Dir string `json:"dir"`
		N   int    `json:"n"`
	} `json:"failRuns"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: testsupervisor SPEC")
		os.Exit(64)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(65)
	}
	var doc struct {
		Spec struct {
			ID   string    `json:"id"`
			Test behaviour `json:"test"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(65)
	}
	id, b := doc.Spec.ID, doc.Spec.Test
	if b.IgnoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	event("start", id)
	if b.Beat != nil {
		go beat(filepath.Join(b.Beat.Dir, fmt.Sprintf("%s.%d", id, os.Getpid())), time.Duration(b.Beat.EveryMs)*time.Millisecond)
	}
	fmt.Printf("running %s\n", id)
	if b.Print != "" {
		fmt.Println(b.Print)
	}
	if b.PrintEnv {
		for _, kv := range os.Environ() {
			fmt.Println(kv)
			fmt.Fprintln(os.Stderr, kv)
		}
	}
	if b.Bulk != nil {
		bulk(b.Bulk.Bytes, os.Getenv(b.Bulk.SecretEnv), b.Bulk.SecretAt)
	}
	if b.Barrier != nil {
		barrier(id, b.Barrier.Dir, b.Barrier.N)
	}
	if b.WaitFor != "" {
		for !exists(b.WaitFor) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(time.Duration(b.SleepMs) * time.Millisecond)
	event("end", id)
	if f := b.FailRuns; f != nil {
		entries, _ := os.ReadDir(f.Dir)
		_ = os.WriteFile(filepath.Join(f.Dir, fmt.Sprintf("run-%d-%d", len(entries), os.Getpid())), nil, 0o600)
		if len(entries) < f.N {
			os.Exit(7)
		}
	}
	os.Exit(b.Exit)
}

// bulk prints about n bytes of 64-byte numbered lines ("line 000042 ...."),
// with secret in the lines at the fractions at of n.
func bulk(n int, secret string, at []float64) {
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	const width = 64
	lines := n / width
	marks := map[int]bool{}
	for _, f := range at {
		marks[int(f*float64(lines))] = true
	}
	for i := range lines {
		line := fmt.Sprintf("line %06d ", i)
		if marks[i] {
			line += "secret=" + secret + " "
		}
		line += strings.Repeat("x", max(0, width-1-len(line)))
		if i%100 == 99 {
			out.Flush() // keep the order across the two streams
			fmt.Fprintln(os.Stderr, line)
			continue
		}
		fmt.Fprintln(out, line)
	}
}

// beat appends the time to path every d, for as long as the process runs.
func beat(path string, d time.Duration) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	for {
		fmt.Fprintf(f, "%d\n", time.Now().UnixNano())
		time.Sleep(d)
	}
}

// barrier holds the first n cells until all n run at once, so a test can see
// full concurrency without guessing at timings.
func barrier(id, dir string, n int) {
	open := filepath.Join(dir, "open")
	_ = os.WriteFile(filepath.Join(dir, "in-"+id), nil, 0o600)
	for !exists(open) {
		entries, _ := os.ReadDir(dir)
		if len(entries) >= n {
			_ = os.WriteFile(open, nil, 0o600)
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func event(what, id string) {
	path := os.Getenv("FLEETD_TEST_EVENTS")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(70)
	}
	defer f.Close()
	mode := "-"
	if st, err := os.Stat(os.Args[1]); err == nil {
		mode = fmt.Sprintf("%o", st.Mode().Perm())
	}
	fmt.Fprintf(f, "%s %s %d %d %s %s\n", what, id, time.Now().UnixNano(), os.Getpid(), os.Args[1], mode)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
