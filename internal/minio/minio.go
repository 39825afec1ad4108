// Package minio starts a MinIO server on loopback, for fleetd's tests, demo
// and benchmarks: the store most self-hosted fleets run, which ignores
// If-Match on DELETE (fleetd uses it with versioning on: see docs/PROTOCOL.md,
// "Stores").
package minio

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/cellos/fleetd/internal/toolbin"
)

// Version is the MinIO build fleetd is tested against (a Go pseudo-version:
// MinIO publishes no module tags).
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// Server is a running MinIO with one drive in a private directory.
type Server struct {
	URL       string // http://127.0.0.1:<port>
	AccessKey string
	SecretKey string
	Dir       string
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *bytes.Buffer
}

// Binary finds the minio binary: $FLEETD_MINIO, else where `make` installs it.
func Binary() (string, error) { return toolbin.Find("FLEETD_MINIO", "minio") }

// Start runs bin on free loopback ports, serving dir, and waits until it
// is ready. The caller must Stop it.
func Start(bin, dir string) (*Server, error) {
	s := &Server{AccessKey: "fleetd-test-" + token(4), SecretKey: token(16), Dir: dir}
	var lastErr error
	for range 5 { // a free port may be taken between probe and bind
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		console, err := freeAddr()
		if err != nil {
			return nil, err
		}
		s.log = &bytes.Buffer{}
		s.cmd = exec.Command(bin, "server", "--quiet", "--address", addr, "--console-address", console, dir)
		s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=on")
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		// Pdeathsig: the server dies with whoever started it, even one killed
		// before it could Stop it (a test binary timed out, a demo cut short).
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start minio: %w", err)
		}
		s.exited = make(chan struct{})
		go func() {
			_ = s.cmd.Wait()
			close(s.exited)
		}()
		s.URL = "http://" + addr
		if lastErr = s.waitReady(); lastErr == nil {
			return s, nil
		}
		s.Stop()
	}
	return nil, fmt.Errorf("minio did not start: %w; output: %s", lastErr, strings.TrimSpace(s.log.String()))
}

// waitReady polls MinIO until its readiness endpoint and S3 both answer.
func (s *Server) waitReady() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return errors.New("minio exited")
		default:
		}
		if ready(client, s.URL+"/minio/health/ready") && ready(client, s.URL+"/") {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("minio not ready at %s after 60s", s.URL)
}

// ready reports whether url answers, and not 503: the health endpoint can
// say ready, under load, while S3 requests still get 503
// XMinioServerNotInitialized (an unsigned GET / answers 403 once they don't).
func ready(client *http.Client, url string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode < 500
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}

// Pid is the server's process id, for reading its resource use.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Env returns the environment that points the AWS SDK and CLI at the server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_S3=" + s.URL,
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func token(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
