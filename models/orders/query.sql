SELECT strftime('%Y-%m-%d %H:%M:00', created_at) AS ts,
       COUNT(*)                                  AS value
FROM orders
WHERE created_at >= :start AND created_at < :end
GROUP BY 1
