// A DocExtract webhook receiver in Go (net/http, standard library only), following the customer docs.
//
//	go build -o receiver . && WEBHOOK_SECRET=whsec_... ./receiver   # PORT (3000) and HOST (127.0.0.1) optional
//
// It checks X-DocExtract-Signature over the raw body before anything else,
// handles each event once (keyed on X-DocExtract-Event-Id, which is the same on
// every retry), answers 200 quickly, and logs event types it does not know.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
)

// Events are at most 256 KiB; refuse to read more than this.
const maxBodyBytes = 1 << 20

type WebhookEvent struct {
	Event string                 `json:"event"`
	Data  map[string]interface{} `json:"data"`
}

// processedEvents holds the event ids already handled. In production use a table
// with the event id as primary key.
type processedEvents struct {
	mu  sync.Mutex // net/http serves each request in its own goroutine
	ids map[string]bool
}

// claim is true for the first request with this id; a retry of it gets false.
func (p *processedEvents) claim(eventID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids[eventID] {
		return false
	}
	p.ids[eventID] = true
	return true
}

// release forgets an id whose handling failed, so the retry handles it again.
func (p *processedEvents) release(eventID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ids, eventID)
}

var (
	webhookSecret = []byte(os.Getenv("WEBHOOK_SECRET"))
	processed     = &processedEvents{ids: map[string]bool{}}
)

func webhookHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	// Read the raw payload: the signature is over these exact bytes.
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		http.Error(w, "Failed to read body", http.StatusBadRequest)
		return
	}

	// Verify the signature before parsing anything.
	signature := r.Header.Get("X-DocExtract-Signature")
	if !verifyWebhookSignature(payload, signature) {
		log.Printf("rejected: invalid signature")
		http.Error(w, "Invalid signature", http.StatusUnauthorized)
		return
	}

	var event WebhookEvent
	if err := json.Unmarshal(payload, &event); err != nil {
		http.Error(w, "Invalid JSON", http.StatusBadRequest)
		return
	}
	eventID := r.Header.Get("X-DocExtract-Event-Id")
	if eventID == "" {
		http.Error(w, "Missing X-DocExtract-Event-Id", http.StatusBadRequest)
		return
	}

	// Idempotency: the same event arrives again when our 200 got lost; handle it once.
	if !processed.claim(eventID) {
		log.Printf("duplicate %s skipped", eventID)
		w.Write([]byte("OK"))
		return
	}
	if err := handleWebhookEvent(eventID, event); err != nil {
		processed.release(eventID)
		log.Printf("handling %s failed; DocExtract will retry: %v", eventID, err)
		http.Error(w, "Handler failed", http.StatusInternalServerError)
		return
	}

	// Respond quickly: DocExtract waits 5 seconds. Queue slow work instead of doing it here.
	w.WriteHeader(http.StatusOK)
	w.Write([]byte("OK"))
}

func verifyWebhookSignature(payload []byte, signature string) bool {
	mac := hmac.New(sha256.New, webhookSecret)
	mac.Write(payload)
	expectedSignature := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(signature), []byte(expectedSignature))
}

func handleWebhookEvent(eventID string, event WebhookEvent) error {
	data := event.Data
	switch event.Event {
	case "job.completed":
		extracted, ok := data["extracted_data"].(map[string]interface{})
		if !ok {
			return fmt.Errorf("job.completed without extracted_data")
		}
		fields := make([]string, 0, len(extracted))
		for name := range extracted {
			fields = append(fields, name)
		}
		sort.Strings(fields)
		log.Printf("handled job.completed %s: job %v extracted %v", eventID, data["id"], fields)
	case "job.failed":
		details, ok := data["error_details"].(map[string]interface{})
		if !ok {
			return fmt.Errorf("job.failed without error_details")
		}
		log.Printf("handled job.failed %s: job %v %v: %v", eventID, data["id"], details["code"], details["message"])
	case "credits.low_balance":
		log.Printf("handled credits.low_balance %s: %v credits left, about %v jobs", eventID,
			data["current_balance"], data["estimated_jobs_remaining"])
	case "credits.depleted":
		log.Printf("handled credits.depleted %s: depleted at %v, %v jobs queued", eventID,
			data["depleted_at"], data["jobs_queued"])
	case "webhook.test":
		log.Printf("handled webhook.test %s: %v", eventID, data["message"])
	default:
		log.Printf("Unknown event type: %s (%s)", event.Event, eventID)
	}
	return nil
}

func getenv(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	log.SetPrefix("go-receiver ")
	if len(webhookSecret) == 0 {
		log.Fatal("set WEBHOOK_SECRET to the endpoint's whsec_ secret")
	}
	http.HandleFunc("/webhooks/docextract", webhookHandler)
	// net.Listen, then Serve: with PORT=0 the log shows the port that was picked.
	listener, err := net.Listen("tcp", net.JoinHostPort(getenv("HOST", "127.0.0.1"), getenv("PORT", "3000")))
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on http://%s/webhooks/docextract", listener.Addr())
	log.Fatal(http.Serve(listener, nil))
}
