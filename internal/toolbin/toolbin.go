// Package toolbin finds the servers `make` installs under .tools/bin
// (versitygw, MinIO, nats-server) for the tests, the demo and the bench.
package toolbin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Find returns $env if set, else .tools/bin/name in the nearest directory at
// or above the working directory that has one (the repository root, also
// above bench/'s own module).
func Find(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, ".tools", "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s %w in .tools/bin at or above the working directory: run `make test` (it installs it) or set %s", name, ErrNotFound, env)
		}
		dir = parent
	}
}

// ErrNotFound is Find's error when neither $env nor .tools/bin names the
// binary.
var ErrNotFound = errors.New("not found")

// MaySkip reports whether a test that needs a server Find could not find may
// skip: everywhere but CI (the CI variable set), where a missing server must
// fail the run instead of letting it pass without the tests that need it.
func MaySkip(err error) bool {
	return errors.Is(err, ErrNotFound) && os.Getenv("CI") == ""
}
