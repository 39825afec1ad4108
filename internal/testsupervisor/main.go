// Command testsupervisor stands in for cellos-supervisor in fleetd's tests and
// benchmarks. It reads the spec file it is given and does what the spec's
// "test" object says, recording its start and end in $FLEETD_TEST_EVENTS as lines of
// "start|end <id> <unix-nanos> <pid> <spec-path> <spec-file-mode>".
//
//	{"spec": {"id": "a", "test": {"sleepMs": 100, "exit": 3, "waitFor": "/path",
//	          "barrier": {"dir": "/path", "n": 4}, "ignoreTerm": true,
//	          "print": "text for stdout", "printEnv": true,
//	          "failRuns": {"dir": "/path", "n": 2}}}}
//
// failRuns makes the first n runs of the spec (counted in dir) exit 7 and
// every later one exit as "exit" says.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
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
	Barrier    *struct {
		Dir string `json:"dir"`
		N   int    `json:"n"`
	} `json:"barrier"`
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
