package selector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// slack is how much later than its deadline a call that falls back may return.
const slack = 150 * time.Millisecond

type vectorFile struct {
	Schema              string   `json:"schema"`
	ModelChecksum       string   `json:"model_checksum"`
	ConfidenceTolerance float64  `json:"confidence_tolerance"`
	Vectors             []vector `json:"vectors"`
}

type vector struct {
	Name      string          `json:"name"`
	Request   json.RawMessage `json:"request"`
	Heuristic string          `json:"heuristic"`
	Service   struct {
		Strategy   string  `json:"strategy"`
		Tier       string  `json:"tier"`
		Fallback   *string `json:"fallback"`
		Confidence float64 `json:"confidence"`
	} `json:"service"`
}

func vectorsPath() string {
	if p := os.Getenv("DWCP_TEST_VECTORS"); p != "" {
		return p
	}
	return "../../models/selector/test_vectors.json"
}

func loadVectors(t *testing.T) (vectorFile, []Request) {
	t.Helper()
	data, err := os.ReadFile(vectorsPath())
	if err != nil {
		t.Fatalf("test vectors (set DWCP_TEST_VECTORS to another file): %v", err)
	}
	var f vectorFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", vectorsPath(), err)
	}
	if f.Schema != "dwcp-test-vectors/1" {
		t.Fatalf("%s: schema %q, want dwcp-test-vectors/1", vectorsPath(), f.Schema)
	}
	if len(f.Vectors) < 100 {
		t.Fatalf("%s: only %d vectors", vectorsPath(), len(f.Vectors))
	}
	reqs := make([]Request, len(f.Vectors))
	for i, v := range f.Vectors {
		dec := json.NewDecoder(bytes.NewReader(v.Request))
		dec.DisallowUnknownFields() // every field of the service's body has its place in Request
		if err := dec.Decode(&reqs[i]); err != nil {
			t.Fatalf("vector %q: %v", v.Name, err)
		}
	}
	return f, reqs
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

func TestHeuristicEqualsThePythonHeuristicOnEveryVector(t *testing.T) {
	f, reqs := loadVectors(t)
	seen := map[string]int{}
	for i, v := range f.Vectors {
		if got := Heuristic(reqs[i]); got != v.Heuristic {
			t.Errorf("vector %q: Go heuristic %q, Python %q", v.Name, got, v.Heuristic)
		}
		seen[v.Heuristic]++
		// what the client sends is the vector's body, field for field
		sent, err := json.Marshal(reqs[i])
		if err != nil {
			t.Fatal(err)
		}
		if !sameJSON(t, sent, v.Request) {
			t.Errorf("vector %q: the client would send\n%s\ninstead of\n%s", v.Name, sent, v.Request)
		}
	}
	for _, s := range Strategies {
		if seen[s] == 0 {
			t.Errorf("no vector where the heuristic answers %q", s)
		}
	}
}

func TestHeuristicRuleOrder(t *testing.T) {
	fast := Link{CapacityBps: 10e9, RTTS: 2e-4}
	slow := Link{CapacityBps: 50e6, RTTS: 0.05}
	mid := Link{CapacityBps: 300e6, RTTS: 0.02}
	cases := []struct {
		size     int64
		entropy  float64
		baseline bool
		sim      float64
		link     Link
		want     string
	}{
		{1023, 1, true, 1, fast, None},
		{1024, 7.5, false, 0, mid, LZ4},
		{1024, math.Nextafter(7.5, 8), false, 0, fast, None},
		{1 << 20, 1, true, 0.95, fast, LZ4},
		{1 << 20, 1, true, 0.95, Link{CapacityBps: 10e9, RTTS: 1e-3}, HDE},
		{1 << 20, 1, true, 0.8, mid, LZ4},
		{1 << 20, 1, true, 0.81, slow, HDE},
		{1 << 20, 1, true, 0, slow, HDE},
		{1 << 20, 1, false, 0.99, slow, Zstd},
		{1 << 20, 1, false, 0, Link{CapacityBps: 100e6, RTTS: 0.05}, LZ4},
		{1 << 20, 1, false, 0, Link{CapacityBps: 200e6, RTTS: 0.05, Utilization: 0.6}, Zstd},
	}
	for _, c := range cases {
		if got := HeuristicRule(c.size, c.entropy, c.baseline, c.sim, c.link); got != c.want {
			t.Errorf("%+v: %q, want %q", c, got, c.want)
		}
	}
	if e := ByteEntropy(bytes.Repeat([]byte{0, 1, 2, 3}, 100)); math.Abs(e-2) > 1e-12 {
		t.Errorf("entropy of 4 equiprobable bytes: %v", e)
	}
}

func aRequest() Request {
	sim := 0.9
	return Request{
		PayloadBytes: 16 << 20,
		PayloadType:  "vm_disk",
		Stats:        &Stats{Entropy: 4.2, ZeroFraction: 0.1},
		HasBaseline:  true,
		Similarity:   &sim,
		Link:         Link{CapacityBps: 1e9, RTTS: 0.03, LinkType: "wan"},
		FreeCores:    4,
	}
}

func within(t *testing.T, what string, elapsed, deadline time.Duration) {
	t.Helper()
	if elapsed > deadline+slack {
		t.Errorf("%s: returned after %v, deadline %v (+%v slack)", what, elapsed, deadline, slack)
	}
}

func TestFallbackWhenTheServiceIsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	c := NewClient("http://" + addr)
	c.Deadline = 300 * time.Millisecond
	t0 := time.Now()
	d, err := c.Select(context.Background(), aRequest())
	within(t, "Select", time.Since(t0), c.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	if !d.FellBack() || d.ClientFallback != FallbackUnavailable || d.Strategy != HDE || d.Tier != "heuristic" {
		t.Errorf("decision %+v", d)
	}
	if d.Err == nil || !strings.Contains(d.Err.Error(), "refused") {
		t.Errorf("cause %v, want connection refused", d.Err)
	}
	t0 = time.Now()
	ds, err := c.SelectBatch(context.Background(), []Request{aRequest(), {PayloadBytes: 10, Link: aRequest().Link}})
	within(t, "SelectBatch", time.Since(t0), c.Deadline)
	if err != nil || len(ds) != 2 || ds[0].Strategy != HDE || ds[1].Strategy != None ||
		ds[1].ClientFallback != FallbackUnavailable {
		t.Errorf("batch %+v, %v", ds, err)
	}
	if c.Healthy(context.Background()) {
		t.Error("a closed port is healthy")
	}
}

// sleeper answers nothing until the client gives up (or 10 s pass).
func sleeper(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // then the server notices when the client hangs up
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFallbackWithinTheDeadlineWhenTheServiceIsSlow(t *testing.T) {
	srv := sleeper(t)
	c := NewClient(srv.URL)
	c.Deadline = 100 * time.Millisecond
	t0 := time.Now()
	d, err := c.Select(context.Background(), aRequest())
	elapsed := time.Since(t0)
	within(t, "Select", elapsed, c.Deadline)
	if elapsed < c.Deadline {
		t.Errorf("gave up after %v, before the deadline %v", elapsed, c.Deadline)
	}
	if err != nil || d.ClientFallback != FallbackDeadline || d.Strategy != HDE {
		t.Errorf("decision %+v, %v", d, err)
	}
	if !errors.Is(d.Err, context.DeadlineExceeded) {
		t.Errorf("cause %v", d.Err)
	}

	// the caller's deadline, when earlier than the client's, is the one kept
	c.Deadline = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel()
	t0 = time.Now()
	d, err = c.Select(ctx, aRequest())
	within(t, "Select with the caller's deadline", time.Since(t0), 80*time.Millisecond)
	if err != nil || d.ClientFallback != FallbackDeadline {
		t.Errorf("decision %+v, %v", d, err)
	}

	c.Deadline = 100 * time.Millisecond
	reqs := make([]Request, 2500) // three batches, one deadline
	for i := range reqs {
		reqs[i] = aRequest()
	}
	t0 = time.Now()
	ds, err := c.SelectBatch(context.Background(), reqs)
	within(t, "SelectBatch", time.Since(t0), c.Deadline)
	if err != nil || len(ds) != len(reqs) || ds[2499].ClientFallback != FallbackDeadline {
		t.Errorf("batch of %d, %v", len(ds), err)
	}

	// a canceled caller gets the heuristic at once
	ctx, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	d, err = c.Select(ctx, aRequest())
	if err != nil || d.ClientFallback != FallbackCanceled {
		t.Errorf("decision %+v, %v", d, err)
	}
}

func serve(t *testing.T, status int, body string) (*httptest.Server, *int64) {
	var calls int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&calls, 1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestFallbackOnServerErrorsAndGarbage(t *testing.T) {
	cases := []struct {
		status int
		body   string
		want   string
	}{
		{500, `{"detail": "boom"}`, FallbackServerError},
		{503, `upstream down`, FallbackServerError},
		{429, `{"detail": "slow down"}`, FallbackServerError},
		{200, `not json`, FallbackBadResponse},
		{200, `{"strategy": "gzip", "tier": "light"}`, FallbackBadResponse},
		{200, `{"tier": "light"}`, FallbackBadResponse},
		{204, ``, FallbackBadResponse},
		{302, ``, FallbackBadResponse},
	}
	for _, c := range cases {
		srv, _ := serve(t, c.status, c.body)
		cl := NewClient(srv.URL)
		d, err := cl.Select(context.Background(), aRequest())
		if err != nil || d.ClientFallback != c.want || d.Strategy != HDE || d.Err == nil {
			t.Errorf("HTTP %d %q: decision %+v, %v; want fallback %s", c.status, c.body, d, err, c.want)
		}
		ds, err := cl.SelectBatch(context.Background(), []Request{aRequest()})
		if err != nil || len(ds) != 1 || ds[0].ClientFallback != c.want {
			t.Errorf("HTTP %d %q: batch %+v, %v", c.status, c.body, ds, err)
		}
	}
	// a batch answer that does not match the request
	srv, _ := serve(t, 200, `{"decisions": [{"strategy": "lz4", "tier": "light"}]}`)
	ds, err := NewClient(srv.URL).SelectBatch(context.Background(), []Request{aRequest(), aRequest()})
	if err != nil || len(ds) != 2 || ds[0].ClientFallback != FallbackBadResponse {
		t.Errorf("short batch: %+v, %v", ds, err)
	}
}

func TestAnInvalidRequestIsAnErrorNotAFallback(t *testing.T) {
	srv, calls := serve(t, 422, `{"detail": [{"msg": "Input should be greater than or equal to 0"}]}`)
	c := NewClient(srv.URL)
	_, err := c.Select(context.Background(), Request{PayloadBytes: -1, Link: aRequest().Link})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 422 || !strings.Contains(se.Detail, "greater than") {
		t.Errorf("error %v", err)
	}
	if _, err := c.SelectBatch(context.Background(), []Request{aRequest()}); !errors.As(err, &se) {
		t.Errorf("batch error %v", err)
	}
	if atomic.LoadInt64(calls) != 2 {
		t.Errorf("%d calls", *calls)
	}
}

func TestAnswerAndRequestForm(t *testing.T) {
	var got map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/select" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "wrong path or type", 400)
			return
		}
		_ = json.NewDecoder(r.Body).Decode(&got)
		_, _ = io.WriteString(w, `{"strategy": "zstd", "confidence": 0.93, "tier": "light", "fallback": null,
			"latency_s": 0.00002, "model_version": "abc"}`)
	}))
	defer srv.Close()
	req := aRequest()
	req.Stats, req.Sample = nil, []byte("hello")
	d, err := NewClient(srv.URL+"/").Select(context.Background(), req)
	if err != nil || d.FellBack() || d.Strategy != Zstd || d.Confidence != 0.93 || d.Fallback != "" ||
		d.ModelVersion != "abc" {
		t.Fatalf("decision %+v, %v", d, err)
	}
	if got["sample_b64"] != "aGVsbG8=" || got["payload_type"] != "vm_disk" || got["similarity"] != 0.9 {
		t.Errorf("sent %v", got)
	}
	if _, ok := got["stats"]; ok {
		t.Errorf("sent stats: %v", got)
	}
}

// With DWCP_SELECTOR_URL set (the Python suite starts the real service and sets it), every vector
// through the service equals its answer there, one by one and in a batch.
func TestTheRealServiceAnswersEveryVector(t *testing.T) {
	url := os.Getenv("DWCP_SELECTOR_URL")
	if url == "" {
		t.Skip("DWCP_SELECTOR_URL is not set: no service to ask")
	}
	f, reqs := loadVectors(t)
	c := NewClient(url)
	c.Deadline = 10 * time.Second // this test checks answers, not speed
	if !c.Healthy(context.Background()) {
		t.Fatalf("%s/healthz does not answer", url)
	}
	tolerance := f.ConfidenceTolerance
	if tolerance == 0 {
		tolerance = 1e-5
	}
	check := func(how string, v vector, d Decision) {
		if d.FellBack() {
			t.Errorf("%s %q: the client fell back (%s): %v", how, v.Name, d.ClientFallback, d.Err)
			return
		}
		if d.Fallback == "deadline" && d.Strategy == v.Heuristic {
			// the service's deadline cool-off depends on time, not on the inputs: the heuristic decides
			t.Logf("%s %q: the service's deadline fallback (timing), heuristic %q", how, v.Name, d.Strategy)
			return
		}
		want := ""
		if v.Service.Fallback != nil {
			want = *v.Service.Fallback
		}
		if d.Strategy != v.Service.Strategy || d.Tier != v.Service.Tier || d.Fallback != want ||
			math.Abs(d.Confidence-v.Service.Confidence) > tolerance {
			t.Errorf("%s %q: service answered %s/%s/%q/%.6f, vector says %s/%s/%q/%.6f", how, v.Name,
				d.Strategy, d.Tier, d.Fallback, d.Confidence,
				v.Service.Strategy, v.Service.Tier, want, v.Service.Confidence)
		}
	}
	for i, v := range f.Vectors {
		d, err := c.Select(context.Background(), reqs[i])
		if err != nil {
			t.Fatalf("vector %q: %v", v.Name, err)
		}
		check("single", v, d)
	}
	ds, err := c.SelectBatch(context.Background(), reqs)
	if err != nil || len(ds) != len(reqs) {
		t.Fatalf("batch: %d decisions, %v", len(ds), err)
	}
	for i, v := range f.Vectors {
		check("batch", v, ds[i])
	}
	t.Logf("%d vectors of model %.12s through %s", len(f.Vectors), f.ModelChecksum, url)
}
