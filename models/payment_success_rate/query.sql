-- One row per minute; kpiwatch rolls rows up into the model's interval.
SELECT strftime('%Y-%m-%d %H:%M:00', created_at) AS ts,
       SUM(status = 'succeeded')                 AS numerator,
       COUNT(*)                                  AS denominator
FROM payments
WHERE created_at >= :start AND created_at < :end
GROUP BY 1
