package queuetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/queue"
)

// The crash test kills a real worker process: it runs the test binary again,
// restricted to this one subtest, with crashChildEnv naming the storage. In
// that child the subtest opens a worker whose handler reports the job and
// then blocks forever; the parent kills the child with SIGKILL mid-job and
// opens a new backend over the same storage.
const (
	crashChildEnv = "QUEUETEST_CRASH_CHILD_STORAGE"
	crashStarted  = "queuetest: crash child is running job "
)

func inCrashChild() bool { return os.Getenv(crashChildEnv) != "" }

// crashRedelivery: a job whose worker process died mid-run runs again on
// the next backend over the same storage, and the lost run counts as an
// attempt.
func (s suite) crashRedelivery(t *testing.T) {
	if storage := os.Getenv(crashChildEnv); storage != "" {
		s.crashChild(t, storage)
		return
	}
	storage := s.f.NewStorage(t)
	policy := fastPolicy(3)
	api := s.open(t, storage, Config{Policy: policy})
	job := newJob(t)
	enqueue(t, api, job)

	child := startCrashChild(t, storage)
	if got := recv(t, child.running, "the child process to start the job"); got != job.ID {
		t.Fatalf("child ran %q, want %q", got, job.ID)
	}
	if info := get(t, api, job.ID); info.State != queue.Active || info.Attempt != 1 {
		t.Fatalf("while the child runs it, the job is %s at attempt %d; want active at 1", info.State, info.Attempt)
	}
	child.kill(t)

	ran := make(chan *queue.Job, 1)
	restart := time.Now()
	worker := s.open(t, storage, Config{Policy: policy, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		ran <- job
		return nil
	})})
	if err := worker.Start(t.Context()); err != nil {
		t.Fatalf("Start after the crash: %v", err)
	}
	again := recv(t, ran, "the interrupted job to run after the restart")
	t.Logf("the interrupted job ran again %v after the new backend was opened", time.Since(restart))
	if again.ID != job.ID || again.Attempt != 2 || again.MaxAttempts != policy.MaxAttempts() {
		t.Errorf("rerun: ID %s attempt %d max %d; want %s, 2 (the lost run counts), %d",
			again.ID, again.Attempt, again.MaxAttempts, job.ID, policy.MaxAttempts())
	}
	waitState(t, worker, job.ID, queue.Completed)
}

// crashChild is the child's side: work the storage, report the job, hang.
func (s suite) crashChild(t *testing.T, storage string) {
	b := s.f.Open(t, storage, Config{Policy: fastPolicy(3), Concurrency: 1, Handler: queue.HandlerFunc(func(ctx context.Context, job *queue.Job) error {
		fmt.Fprintf(os.Stdout, "%s%s\n", crashStarted, job.ID)
		select {} // until SIGKILL
	})})
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("crash child: Start: %v", err)
	}
	time.Sleep(time.Minute) // the parent kills us long before
	t.Fatalf("crash child: not killed within a minute")
}

type crashChild struct {
	cmd     *exec.Cmd
	running chan string
	stderr  strings.Builder
}

func startCrashChild(t *testing.T, storage string) *crashChild {
	t.Helper()
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	c := &crashChild{running: make(chan string, 1)}
	c.cmd = exec.Command(os.Args[0], "-test.run="+strings.Join(parts, "/"), "-test.count=1", "-test.timeout=2m")
	c.cmd.Env = append(os.Environ(), crashChildEnv+"="+storage)
	c.cmd.Stderr = &c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start crash child: %v", err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("crash child stderr:\n%s", c.stderr.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), crashStarted); ok {
				c.running <- id
			}
		}
	}()
	return c
}

// kill is kill -9: the child runs no more code, not even deferred calls.
func (c *crashChild) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill crash child: %v", err)
	}
	_ = c.cmd.Wait()
}
