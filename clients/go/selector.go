// Package selector is a Go client of the dwcp-selector HTTP service: it asks the service which encoder
// (none, lz4, zstd, hde) a transfer should use, and when the service cannot answer in time (slow, down,
// answering 5xx or garbage) it decides locally with the rule heuristic and says so.
//
// Standard library only.
package selector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Defaults of a Client.
const (
	DefaultDeadline = 50 * time.Millisecond // per call, when the caller's context has no earlier one
	MaxBatch        = 1000                  // requests per POST /v1/select:batch (the service's limit)
	maxResponse     = 8 << 20               // bytes of a response body read at most
)

// Why the client decided locally (Decision.ClientFallback).
const (
	FallbackDeadline    = "deadline"     // no answer within the call's deadline
	FallbackCanceled    = "canceled"     // the caller's context was canceled
	FallbackUnavailable = "unavailable"  // connection refused, reset, DNS: the service is down
	FallbackServerError = "server_error" // a 5xx, 408 or 429 answer
	FallbackBadResponse = "bad_response" // an answer that is not a decision
	FallbackHeuristic   = "heuristic"    // the tier of a decision the client took
)

// Link is the path between sender and receiver, as measured before the transfer.
type Link struct {
	CapacityBps float64 `json:"capacity_bps"`        // raw link rate, bit/s
	RTTS        float64 `json:"rtt_s"`               // round-trip time, seconds
	Loss        float64 `json:"loss"`                // packet loss probability, [0, 1)
	Utilization float64 `json:"utilization"`         // share used by other traffic, [0, 1)
	LinkType    string  `json:"link_type,omitempty"` // dc, metro, wan or edge, when known
}

// Stats are the statistics of a payload sample, computed by the caller.
type Stats struct {
	Entropy      float64 `json:"entropy"`       // bits per byte, 0..8
	ZeroFraction float64 `json:"zero_fraction"` // share of zero bytes
	TextFraction float64 `json:"text_fraction"` // share of printable text bytes
}

// Request is one transfer to decide, in the body form of POST /v1/select. Give Stats, or a Sample of at
// most 64 KiB (sent base64-encoded), or neither (the service then answers with the heuristic).
type Request struct {
	PayloadBytes int64    `json:"payload_bytes"`
	PayloadType  string   `json:"payload_type,omitempty"` // "other" when empty
	Sample       []byte   `json:"sample_b64,omitempty"`
	Stats        *Stats   `json:"stats,omitempty"`
	HasBaseline  bool     `json:"has_baseline"`
	Similarity   *float64 `json:"similarity,omitempty"` // baseline similarity estimate, 0..1
	Link         Link     `json:"link"`
	FreeCores    float64  `json:"free_cores,omitempty"` // free cores of the node; 1 when 0
	ResourceID   string   `json:"resource_id,omitempty"`
}

// Decision is the encoder to use. When ClientFallback is set the service was not asked successfully and
// the client's heuristic decided (Tier "heuristic"); Err says what went wrong. Fallback is the service's
// own reason for answering with its heuristic ("" when its model decided).
type Decision struct {
	Strategy     string  `json:"strategy"`
	Confidence   float64 `json:"confidence"`
	Tier         string  `json:"tier"`
	Fallback     string  `json:"fallback"`
	LatencyS     float64 `json:"latency_s"`
	ModelVersion string  `json:"model_version"`

	ClientFallback string `json:"-"`
	Err            error  `json:"-"`
}

// FellBack says whether the client decided locally.
func (d Decision) FellBack() bool { return d.ClientFallback != "" }

// StatusError is a 4xx answer of the service (other than 408 and 429): the request itself is wrong, and
// the client does not hide that behind a heuristic decision.
type StatusError struct {
	Status int
	Detail string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("dwcp-selector service: HTTP %d: %s", e.Status, e.Detail)
}

// Client asks one dwcp-selector service. It is safe for concurrent use.
type Client struct {
	BaseURL  string        // e.g. http://127.0.0.1:8080
	Deadline time.Duration // per call, unless the caller's context ends earlier; DefaultDeadline when 0
	HTTP     *http.Client
}

// NewClient is a client of the service at baseURL with DefaultDeadline and an http.Client whose dial,
// header and idle timeouts are bounded.
func NewClient(baseURL string) *Client {
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   2 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &Client{
		BaseURL:  strings.TrimRight(baseURL, "/"),
		Deadline: DefaultDeadline,
		HTTP:     &http.Client{Transport: transport, Timeout: 10 * time.Second},
	}
}

// Select asks the service for one decision. The error is non-nil only for a request the service refused
// as invalid (a *StatusError); every failure of the service itself gives the heuristic's decision with
// ClientFallback and Err set.
func (c *Client) Select(ctx context.Context, req Request) (Decision, error) {
	var d Decision
	err := c.post(ctx, "/v1/select", req, &d)
	if err == nil {
		err = checkDecision(d)
	}
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			return Decision{}, err
		}
		return fallback(ctx, req, err), nil
	}
	return d, nil
}

// SelectBatch asks the service for many decisions (in batches of MaxBatch, within the one deadline).
// Its errors are those of Select; a batch that fails gets the heuristic's decisions.
func (c *Client) SelectBatch(ctx context.Context, reqs []Request) ([]Decision, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	out := make([]Decision, 0, len(reqs))
	for start := 0; start < len(reqs); start += MaxBatch {
		end := start + MaxBatch
		if end > len(reqs) {
			end = len(reqs)
		}
		part := reqs[start:end]
		var answer struct {
			Decisions []Decision `json:"decisions"`
		}
		err := c.post(ctx, "/v1/select:batch", struct {
			Requests []Request `json:"requests"`
		}{part}, &answer)
		if err == nil && len(answer.Decisions) != len(part) {
			err = fmt.Errorf("%d decisions for %d requests", len(answer.Decisions), len(part))
			err = &badResponse{err}
		}
		for i := 0; err == nil && i < len(answer.Decisions); i++ {
			err = checkDecision(answer.Decisions[i])
		}
		if err != nil {
			var se *StatusError
			if errors.As(err, &se) {
				return nil, err
			}
			for _, r := range part {
				out = append(out, fallback(ctx, r, err))
			}
			continue
		}
		out = append(out, answer.Decisions...)
	}
	return out, nil
}

// Healthy says whether the service answers GET /healthz within the call's deadline.
func (c *Client) Healthy(ctx context.Context) bool {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse))
	return resp.StatusCode == http.StatusOK
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := c.Deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	return context.WithTimeout(ctx, deadline) // the earlier of the caller's deadline and this one
}

type badResponse struct{ err error }

func (e *badResponse) Error() string { return "not a decision: " + e.err.Error() }
func (e *badResponse) Unwrap() error { return e.err }

type serverError struct {
	status int
	body   string
}

func (e *serverError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

func (c *Client) post(ctx context.Context, path string, body any, out any) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	payload, err := json.Marshal(body)
	if err != nil {
		return &StatusError{Status: 0, Detail: "cannot encode the request: " + err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+path, bytes.NewReader(payload))
	if err != nil {
		return &StatusError{Status: 0, Detail: "bad service URL: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return err
	}
	if len(data) > maxResponse {
		return &badResponse{fmt.Errorf("response larger than %d bytes", maxResponse)}
	}
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout ||
		resp.StatusCode == http.StatusTooManyRequests:
		return &serverError{resp.StatusCode, snippet(data)}
	case resp.StatusCode >= 400:
		var detail struct {
			Detail any `json:"detail"`
		}
		msg := snippet(data)
		if json.Unmarshal(data, &detail) == nil && detail.Detail != nil {
			if b, err := json.Marshal(detail.Detail); err == nil {
				msg = snippet(b)
			}
		}
		return &StatusError{Status: resp.StatusCode, Detail: msg}
	case resp.StatusCode != http.StatusOK:
		return &badResponse{fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &badResponse{err}
	}
	return nil
}

func checkDecision(d Decision) error {
	for _, s := range Strategies {
		if d.Strategy == s {
			return nil
		}
	}
	return &badResponse{fmt.Errorf("strategy %q", d.Strategy)}
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// fallback is the heuristic's decision for req, with why the service was not used.
func fallback(ctx context.Context, req Request, err error) Decision {
	return Decision{
		Strategy:       Heuristic(req),
		Tier:           FallbackHeuristic,
		ClientFallback: reason(ctx, err),
		Err:            err,
	}
}

func reason(ctx context.Context, err error) string {
	var be *badResponse
	var se *serverError
	var ne net.Error
	switch {
	case errors.As(err, &be):
		return FallbackBadResponse
	case errors.As(err, &se):
		return FallbackServerError
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return FallbackDeadline
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return FallbackCanceled
	case errors.As(err, &ne) && ne.Timeout():
		return FallbackDeadline
	default:
		return FallbackUnavailable
	}
}
