SELECT date(created_at)          AS ts,
       SUM(amount_cents) / 100.0 AS value
FROM orders
WHERE status = 'paid' AND created_at >= :start AND created_at < :end
GROUP BY 1
